# Says `@init`, writes to the console and stdout (every byte value, then a
# marker line), then reports the last word of the kernel command line as
# its exit status and spins: the VM must end at the status line. With
# `--cmdline 7` the status is 7, whatever microrun put before it.
	.include "common.inc"
main:
	call put_streams
	mov 0x228(%r15), %edi	# the command line
	mov %rdi, %rsi		# start of its last word so far
2:	movb (%rdi), %al
	test %al, %al
	jz 3f
	add $1, %rdi
	cmp $' ', %al
	jne 2b
	mov %rdi, %rsi
	jmp 2b
3:	mov %rsi, %rdi
	mov $STATUS, %dx
	call puts
	call newline
4:	jmp 4b
