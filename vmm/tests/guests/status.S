# Writes to the console and stdout, then reports the command line as its
# exit status and spins: the VM must end at the status line.
	.include "common.inc"
main:
	call put_streams
	mov $STATUS, %dx
	call put_cmdline
	call newline
2:	jmp 2b
