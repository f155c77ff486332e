/* timeit [-a] [-p N] RUNS CMD [ARGS...]: runs CMD RUNS times (with -p, N
 * copies at once per run) and prints each run's wall time in ms, one per
 * line. CMD's stdout and stderr go to /dev/null. A run whose exit status is
 * not 0 stops it with status 1, unless -a (any status: for peers that end
 * a VM by a reset); a run that takes over 120 s is killed (SIGALRM) and
 * counts as failed. Static, so that it runs in the nested lane's busybox
 * world, where `date` has no nanoseconds. Built by scripts/bench-boot. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
	int any = 0, copies = 1, i = 1;
	while (i < argc && argv[i][0] == '-') {
		if (!strcmp(argv[i], "-a")) {
			any = 1;
			i++;
		} else if (!strcmp(argv[i], "-p") && i + 1 < argc) {
			copies = atoi(argv[i + 1]);
			i += 2;
		} else {
			break;
		}
	}
	if (argc - i < 2 || copies < 1) {
		fprintf(stderr, "usage: timeit [-a] [-p N] RUNS CMD [ARGS...]\n");
		return 2;
	}
	int runs = atoi(argv[i]);
	char **cmd = argv + i + 1;
	for (int r = 0; r < runs; r++) {
		double t0 = now_ms();
		for (int c = 0; c < copies; c++) {
			pid_t pid = fork();
			if (pid < 0) {
				perror("timeit: fork");
				return 1;
			}
			if (pid == 0) {
				int null = open("/dev/null", O_RDWR);
				dup2(null, 0);
				dup2(null, 1);
				dup2(null, 2);
				alarm(120);
				execvp(cmd[0], cmd);
				_exit(127);
			}
		}
		int failed = 0, status;
		for (int c = 0; c < copies; c++) {
			if (wait(&status) < 0 || !WIFEXITED(status) || (WEXITSTATUS(status) != 0 && !any))
				failed = 1;
		}
		double t1 = now_ms();
		if (failed) {
			fprintf(stderr, "timeit: %s failed (status %d)\n", cmd[0], status);
			return 1;
		}
		printf("%.1f\n", t1 - t0);
		fflush(stdout);
	}
	return 0;
}
