# Prints the command line, the initrd's address, size and byte sum, and
# the e820 map to stdout, then reports status 0.
	.include "common.inc"
main:
	mov $STDOUT, %dx
	call put_cmdline
	call newline
	mov 0x218(%r15), %esi	# ramdisk_image
	mov 0x21c(%r15), %ecx	# ramdisk_size
	mov %esi, %eax
	call puthex
	call newline
	mov 0x21c(%r15), %eax
	call puthex
	call newline
	xor %r8d, %r8d		# byte sum
	mov 0x21c(%r15), %ecx
	test %ecx, %ecx
	jz 2f
1:	movzbl (%rsi), %eax
	add %eax, %r8d
	add $1, %rsi
	sub $1, %ecx
	jnz 1b
2:	mov %r8d, %eax
	call puthex
	call newline
	movzbl 0x1e8(%r15), %r9d	# e820_entries
	mov %r9d, %eax
	call puthex
	call newline
	call put_e820
	jmp report_ok
