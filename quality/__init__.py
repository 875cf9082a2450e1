"""Quality Workbench: data quality for medical-imaging ML."""

__version__ = "0.1.0"
