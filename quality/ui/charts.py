"""Plotly figures for the pages (pure: DataFrames in, figures out)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

__all__ = ["images_by_source_chart", "ingest_errors_chart"]


def images_by_source_chart(df: pd.DataFrame) -> go.Figure:
    """Stacked bars of images per source, one colour per modality.

    Parameters
    ----------
    df : columns ``source, modality, n_images`` (:func:`quality.db.queries.images_by_source`).
    """
    fig = px.bar(
        df,
        x="source",
        y="n_images",
        color="modality",
        labels={"source": "Source", "n_images": "Images", "modality": "Modality"},
    )
    fig.update_layout(barmode="stack", height=320, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


def ingest_errors_chart(df: pd.DataFrame) -> go.Figure:
    """Horizontal bars of ingest errors per kind.

    Parameters
    ----------
    df : columns ``kind, count`` (:func:`quality.db.queries.ingest_error_summary`).
    """
    fig = px.bar(
        df.sort_values("count"),
        x="count",
        y="kind",
        orientation="h",
        labels={"count": "Files", "kind": "Error kind"},
    )
    fig.update_layout(
        height=max(160, 40 * len(df) + 60), margin={"l": 10, "r": 10, "t": 10, "b": 10}
    )
    return fig
