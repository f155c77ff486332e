# A hostile 9p driver: the hostile console driver's rounds (see
# virtio_garbage.inc) against the first share's virtio-9p device (the
# VM's only device, so in the first virtio-mmio slot), whose
# one queue then carries random bytes as 9P requests. Reports 0 (1 or 2:
# the window is not a virtio-9p device).
	.include "common.inc"
	.set WINDOW, 0xd0000000
	.set DEVICE_ID, 9
	.set FEATURES, 1		# MOUNT_TAG
	.set QUEUES, 1
	.include "virtio_garbage.inc"
