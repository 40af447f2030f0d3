"""Frozen diffusion priors used for score distillation (see ``att3d.priors.base``)."""
