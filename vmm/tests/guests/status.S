# Writes to the console and stdout, then reports the command line as its
# exit status and spins: the VM must end at the status line.
	.include "common.inc"
main:
	mov $STATUS, %dx
	lea init_event(%rip), %rdi
	call puts
	mov $CONSOLE, %dx
	lea console_text(%rip), %rdi
	call puts
	mov $STDOUT, %dx
	xor %eax, %eax		# every byte value, 0..255, in order
1:	out %al, %dx
	add $1, %eax
	cmp $256, %eax
	jne 1b
	lea stdout_text(%rip), %rdi
	call puts
	mov $STATUS, %dx
	call put_cmdline
	call newline
2:	jmp 2b

init_event:	.asciz "@init\n"
console_text:	.asciz "console: hello from the guest\n"
stdout_text:	.asciz "stdout-end\n"
