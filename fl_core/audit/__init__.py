"""The privacy audit of a finished run directory: what was promised, and evidence that it holds."""

from fl_core.audit.checks import audit_run, write_audit

__all__ = ["audit_run", "write_audit"]
