"""The hibernation cycle: prepare B in A, save in B, resume in C (DESIGN §1)."""
