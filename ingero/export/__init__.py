"""Export a stored trace to other tools' formats (Chrome/Perfetto trace-event JSON)."""

from ingero.export.perfetto import ExportSummary, export_perfetto, write_perfetto

__all__ = ["ExportSummary", "export_perfetto", "write_perfetto"]
