/* timeit [-a] [-p N] [-t SECONDS] RUNS CMD [ARGS...]: runs CMD RUNS times
 * (with -p, N copies at once per run) and prints each run's wall time in
 * ms, one per line. CMD's stdout and stderr go to /dev/null. A run whose
 * exit status is not 0 stops it with status 1, unless -a (any status: for
 * peers that end a VM by a reset); a run that takes over SECONDS (default
 * 120) is killed (SIGKILL, from an alarm) and counts as failed, with
 * "timed out" on stderr. Static, so that it runs in the nested lane's busybox
 * world, where `date` has no nanoseconds. Built by scripts/bench-boot. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
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

static volatile sig_atomic_t expired;

static void on_alarm(int sig) {
	(void)sig;
	expired = 1;
}

int main(int argc, char **argv) {
	int any = 0, copies = 1, limit = 120, i = 1;
	while (i < argc && argv[i][0] == '-') {
		if (!strcmp(argv[i], "-a")) {
			any = 1;
			i++;
		} else if (!strcmp(argv[i], "-t") && i + 1 < argc) {
			limit = atoi(argv[i + 1]);
			i += 2;
		} else if (!strcmp(argv[i], "-p") && i + 1 < argc) {
			copies = atoi(argv[i + 1]);
			i += 2;
		} else {
			break;
		}
	}
	if (argc - i < 2 || copies < 1 || limit < 1) {
		fprintf(stderr, "usage: timeit [-a] [-p N] [-t SECONDS] RUNS CMD [ARGS...]\n");
		return 2;
	}
	int runs = atoi(argv[i]);
	char **cmd = argv + i + 1;
	pid_t *pids = calloc(copies, sizeof(pid_t));
	/* No SA_RESTART: the alarm interrupts wait(). */
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	for (int r = 0; r < runs; r++) {
		double t0 = now_ms();
		for (int c = 0; c < copies; c++) {
			pid_t pid = fork();
			pids[c] = pid;
			if (pid < 0) {
				perror("timeit: fork");
				return 1;
			}
			if (pid == 0) {
				/* A group of its own, so that a timeout kills
				 * everything it started. */
				setpgid(0, 0);
				int null = open("/dev/null", O_RDWR);
				dup2(null, 0);
				dup2(null, 1);
				dup2(null, 2);
				execvp(cmd[0], cmd);
				_exit(127);
			}
		}
		int failed = 0, timed_out = 0, status = 0;
		expired = 0;
		alarm(limit);
		for (int c = 0; c < copies;) {
			if (wait(&status) < 0) {
				if (errno != EINTR)
					break;
				if (expired && !timed_out) {
					timed_out = 1;
					for (int k = 0; k < copies; k++) {
						kill(-pids[k], SIGKILL);
						kill(pids[k], SIGKILL);
					}
				}
				continue;
			}
			c++;
			if (!WIFEXITED(status) || (WEXITSTATUS(status) != 0 && !any))
				failed = 1;
		}
		alarm(0);
		double t1 = now_ms();
		if (timed_out) {
			fprintf(stderr, "timeit: %s timed out after %d s\n", cmd[0], limit);
			return 1;
		}
		if (failed) {
			fprintf(stderr, "timeit: %s failed (status %d)\n", cmd[0], status);
			return 1;
		}
		printf("%.1f\n", t1 - t0);
		fflush(stdout);
	}
	return 0;
}
