"""Request bodies as typed objects, parsed once at the boundary with the texts each API answers."""
