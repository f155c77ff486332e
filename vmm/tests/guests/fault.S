# Executes `popcnt` at CPL0, which kvm_pvm's instruction emulator does not
# know (KVM_EXIT_INTERNAL_ERROR there), then reports the bit count (3) as
# its exit status, which hardware KVM runs natively.
	.include "common.inc"
main:
	mov $0x80000101, %eax		# three bits set
	.globl fault
fault:
	popcnt %eax, %ecx
	mov $'0', %al
	add %cl, %al
	jmp report
