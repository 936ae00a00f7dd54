"""The federated training loop (``loop``), its checkpoints, records and report, and the canary
recorder the audit reads."""
