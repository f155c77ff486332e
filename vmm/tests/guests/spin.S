# Spins forever without reporting: only a timeout ends it.
	.include "common.inc"
main:
	jmp main
