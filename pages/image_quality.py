"""Image quality: metric distributions, the worst images, OOD, duplicates, leakage and a map
of the images, from the scores of ``quality score``."""

from __future__ import annotations

import streamlit as st

from quality.ui import data, router, sidebar
from quality.ui import image_quality as iq

router.page_guard("image_quality")
st.title("🩻 Image quality")
st.caption(
    "Which images are unfit — blurred, noisy, badly exposed, inverted, blank, cut off, or not "
    "a medical image at all — and which are duplicated or leak across splits."
)

data.require_data()
dataset_id = sidebar.current_dataset_id()
with data.db_guard():
    report = iq.version_picker(dataset_id)

iq.headline(report)

st.subheader("Metric distributions")
with data.db_guard():
    values = iq.distributions(report)

st.subheader("Worst images")
with data.db_guard():
    worst = iq.worst_gallery(report)

left, right = st.columns([2, 3])
with left:
    st.subheader("Defect types")
    iq.defect_overview(report)
with right:
    st.subheader("Out of distribution")
    with data.db_guard():
        ood = iq.ood_section(report)
iq.ood_gallery(ood)

st.subheader("Map of the images")
with data.db_guard():
    points = iq.embedding_map(report)

st.subheader("Duplicates")
dups = leaks = None
with iq.scan_guard("Duplicates"):
    dups, leaks = iq.scans(dataset_id)
    iq.duplicates_section(dups)

st.subheader("Leakage across splits")
if dups is not None:
    iq.leakage_section(leaks)

st.subheader("Downloads")
iq.downloads(
    {
        "Worst images": worst,
        "OOD": ood,
        "Metric values": values,
        "Map": points,
        "Duplicates": dups.near if dups is not None else None,
        "Patient leakage": leaks.patients if leaks is not None else None,
        "Duplicate leakage": leaks.duplicates if leaks is not None else None,
    },
    stem=f"image-quality-{report.scorer_version}",
)
