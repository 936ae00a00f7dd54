"""Local training in torch: clients (one at a time through Opacus, or a vectorized cohort), the
datasets that ship with the install, models, parameter vectors, server optimizers, personalization.
The only layer of fl_core that imports torch at module level."""
