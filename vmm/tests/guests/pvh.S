# A PVH guest: entered in 32-bit protected mode without paging at the
# address in its Xen note, EBX = hvm_start_info. Checks the magic, then
# prints to stdout the command line, the start info's version, its module
# list (count; first module's address, size and byte sum) and memory map,
# and reports status 0 (status 1 if the magic is wrong).
	.set STDOUT, 0x2f8
	.set STATUS, 0x3e8
	.set XEN_HVM_START_MAGIC, 0x336ec578
	.set XEN_ELFNOTE_PHYS32_ENTRY, 18

	.pushsection .note.Xen, "a", @note
	.balign 4
	.long 4				# namesz: "Xen\0"
	.long 4				# descsz
	.long XEN_ELFNOTE_PHYS32_ENTRY
	.asciz "Xen"
	.balign 4
	.long _start			# the 32-bit physical entry
	.popsection

	.text
	.code32
	.globl _start
_start:
	mov $stack_top, %esp		# PVH provides no stack
	mov %ebx, %ebp			# keep the start info
	mov $STATUS, %dx
	cmpl $XEN_HVM_START_MAGIC, (%ebp)
	je 1f
	mov $'1', %al
	out %al, %dx
	call newline
	jmp halt
1:	mov $STDOUT, %dx
	mov 24(%ebp), %esi		# cmdline_paddr
	call puts
	call newline
	mov 4(%ebp), %eax		# version
	call puthex
	call newline
	mov 12(%ebp), %eax		# nr_modules
	call puthex
	call newline
	cmpl $0, 12(%ebp)
	je 3f
	mov 16(%ebp), %edi		# modlist_paddr: the first hvm_modlist_entry
	mov %edi, %esi
	call put64			# paddr
	call newline
	lea 8(%edi), %esi
	call put64			# size
	call newline
	mov (%edi), %esi
	mov 8(%edi), %ecx
	xor %edi, %edi			# byte sum
	test %ecx, %ecx
	jz 2f
1:	movzbl (%esi), %eax
	add %eax, %edi
	add $1, %esi
	sub $1, %ecx
	jnz 1b
2:	mov %edi, %eax
	call puthex
	call newline
3:	mov 48(%ebp), %eax		# memmap_entries
	call puthex
	call newline
	mov 48(%ebp), %ecx
	mov 40(%ebp), %edi		# memmap_paddr: 24-byte entries
4:	test %ecx, %ecx
	jz 5f
	push %ecx
	mov %edi, %esi
	call put64			# addr
	mov $' ', %al
	out %al, %dx
	lea 8(%edi), %esi
	call put64			# size
	mov $' ', %al
	out %al, %dx
	mov 16(%edi), %eax		# type
	call puthex
	call newline
	pop %ecx
	add $24, %edi
	sub $1, %ecx
	jmp 4b
5:	mov $STATUS, %dx
	mov $'0', %al
	out %al, %dx
	call newline
halt:	jmp halt

# puts: write the NUL-terminated string at %esi to port %dx.
puts:
	movb (%esi), %al
	test %al, %al
	jz 1f
	out %al, %dx
	add $1, %esi
	jmp puts
1:	ret

# put64: write the 64-bit value at %esi as 16 hex digits to port %dx.
put64:
	mov 4(%esi), %eax
	call puthex
	mov (%esi), %eax
	jmp puthex

# puthex: write %eax as 8 hex digits to port %dx.
puthex:
	push %ecx
	mov %eax, %ebx
	mov $8, %ecx
1:	rol $4, %ebx
	mov %ebx, %eax
	and $0xf, %eax
	cmp $10, %eax
	jb 2f
	add $('a' - '0' - 10), %eax
2:	add $'0', %eax
	out %al, %dx
	sub $1, %ecx
	jnz 1b
	pop %ecx
	ret

# newline: write '\n' to port %dx.
newline:
	mov $'\n', %al
	out %al, %dx
	ret

	.balign 16
	.skip 256
stack_top:
