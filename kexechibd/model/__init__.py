"""The machine model (DESIGN §7)."""
