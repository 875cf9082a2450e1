"""Streamlit building blocks of the workbench: the only part of ``quality`` that imports streamlit.

- :mod:`quality.ui.data`: the engine as a cached resource, cached query wrappers, and the
  guard that turns an unreachable or empty DB into a plain message.
- :mod:`quality.ui.nav`: the page registry and which role sees which page.
- :mod:`quality.ui.sidebar`: role and dataset pickers.
- :mod:`quality.ui.viewer`: the DICOM image viewer (plotly; window presets, slices, overlays
  of predictions, annotations and corrections with a toggle per owner) and the masked header
  table.
- :mod:`quality.ui.widgets` / :mod:`quality.ui.charts`: page sections and plotly figures.
"""
