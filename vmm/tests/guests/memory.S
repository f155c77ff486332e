# Prints the initrd's size and the e820 map to stdout, then reports status
# 0. Unlike bootinfo it does not read the initrd, which would take seconds
# per MiB where guest kernel code is emulated (kvm_pvm).
	.include "common.inc"
main:
	mov $STDOUT, %dx
	mov 0x21c(%r15), %eax	# ramdisk_size
	call puthex
	call newline
	call put_e820
	jmp report_ok
