"""Audit (admins only): who signed in, revealed PHI, gave verdicts, changed rules, exported
or changed users, and when; and the users of the app."""

from __future__ import annotations

import streamlit as st

from quality.ui import audit, router

router.page_guard("audit")
st.title("🛡️ Audit")
st.caption(
    "Who did what and when: sign-ins, PHI reveals, verdicts, rules changes, exports and user "
    "changes. Rows never hold patient data or secrets."
)

st.header("Audit log")
audit.audit_log_section()

st.header("Users")
audit.users_section()
