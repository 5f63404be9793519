"""Variant families, one module each: everything a family's variants need beyond models/ (bench/families/base.py
says what that is). :data:`FAMILIES` maps a family's name (the MLflow tag ``family``) to its object; the
registry's variant table names each variant's family and paper configuration.

- :data:`GAN` (gan.py): DDGAN / WaveDiff;
- :data:`DIFFUSION` (diffusion.py): DDPM / DDIM / WDDM;
- :data:`DVDP` (dvdp.py): dimensionality-varying diffusion.

A new family is one more module here and one line in :data:`FAMILIES` (README "Adding a model family").
"""
from bench.families.base import Family, System, space_shape
from bench.families.diffusion import DIFFUSION
from bench.families.dvdp import DVDP
from bench.families.gan import GAN

__all__ = ["Family", "System", "space_shape", "GAN", "DIFFUSION", "DVDP", "FAMILIES"]

FAMILIES: dict[str, Family] = {f.name: f for f in (GAN, DIFFUSION, DVDP)}
