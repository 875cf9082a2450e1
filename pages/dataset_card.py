"""Dataset card: a data product's documentation built live from the database, its free-text
fields, versions, the diff between two versions, and snapshots."""

from __future__ import annotations

import streamlit as st

from quality.ui import card as card_ui
from quality.ui import data, router, sidebar

router.page_guard("dataset_card")
st.title("🪪 Dataset card")
st.caption(
    "What is in a dataset, where it comes from, who labelled it and how well, what it is for, "
    "and what changed between versions — computed from the database, except the owner's text."
)

data.require_data()
dataset_id = card_ui.require_dataset(sidebar.current_dataset_id())
with card_ui.guard():
    versions = card_ui.versions(dataset_id)
version = card_ui.version_picker(versions)
with card_ui.guard():
    card = card_ui.get_card(dataset_id, version)

card_ui.show_flash()
card_ui.headline(card)

tab_card, tab_edit, tab_versions = st.tabs(["📄 Card", "✏️ Edit the text", "🗂️ Versions"])
with tab_card:
    card_ui.show_charts(card)
    markdown = card_ui.rendered(card)
with tab_edit:
    card_ui.editor(card)
with tab_versions:
    with card_ui.guard():
        diff_tables = card_ui.versions_section(card)
    card_ui.snapshot_form(card)

st.subheader("Downloads")
card_ui.downloads(card, markdown, diff_tables)
