/* A null init: writes one line on the console (ttyS0), reports status 0 on
 * microrun's status port (ttyS2, which other VMMs do not have: the open
 * fails there) and resets, which ends Firecracker (reboot=k) and QEMU
 * (-no-reboot). The same initrd for every VMM, so that boot-to-exit
 * compares the VMMs, not the inits. The device nodes are made here: an
 * initramfs has no /dev. */
#include <fcntl.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static void say(const char *node, unsigned minor, const char *text) {
	mknod(node, S_IFCHR | 0600, makedev(4, minor));
	int fd = open(node, O_WRONLY | O_NOCTTY);
	if (fd >= 0) {
		write(fd, text, strlen(text));
		close(fd);
	}
}

int main(void) {
	say("/ttyS0", 64, "null init\n");
	say("/ttyS2", 66, "0\n");
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}
