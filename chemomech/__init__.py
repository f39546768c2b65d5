"""chemomech: learn chemo-mechanical constitutive laws of solids from correlative microscopy.

Data flows one way: files -> stack -> mesh and fields -> forward/inverse -> results.
The FEniCSx parts are imported lazily by the modules that need them, so the data
layer (readers, stack, frames) works without DOLFINx.
"""

__version__ = "0.1.0"
