# Prints the initrd's size and the e820 map to stdout, then reports status
# 0. Unlike bootinfo it does not read the initrd, which would take seconds
# per MiB where guest kernel code is emulated (kvm_pvm).
	.include "common.inc"
main:
	mov $STDOUT, %dx
	mov 0x21c(%r15), %eax	# ramdisk_size
	call puthex
	call newline
	movzbl 0x1e8(%r15), %r9d	# e820_entries
	lea 0x2d0(%r15), %r10	# e820_table: 20-byte entries
1:	test %r9d, %r9d
	jz 2f
	mov 4(%r10), %eax
	call puthex
	mov (%r10), %eax
	call puthex
	mov $' ', %al
	out %al, %dx
	mov 12(%r10), %eax
	call puthex
	mov 8(%r10), %eax
	call puthex
	mov $' ', %al
	out %al, %dx
	mov 16(%r10), %eax
	call puthex
	call newline
	add $20, %r10
	sub $1, %r9d
	jmp 1b
2:	mov $STATUS, %dx
	mov $'0', %al
	out %al, %dx
	call newline
3:	jmp 3b
