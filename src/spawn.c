/*
 * spawn.c: running the system's own tools (iptables-restore, tc) at setup
 * and teardown, never on the per-packet path.
 *
 * The child gets the text on its stdin, an empty signal mask (the daemon
 * blocks its signals outside epoll_pwait()) and our stderr, so the tool's
 * own error messages reach the log.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "divertd.h"

extern char **environ;

/*
 * Run argv with input on its stdin; collect its stdout into *out (malloc'd)
 * when out is not NULL.  Returns the exit status, or -1.
 */
int spawn_run(char *const argv[], const char *input, char **out)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none;
	int in_pipe[2] = { -1, -1 }, out_pipe[2] = { -1, -1 };
	size_t cap = 0, len = 0;
	char *buf = NULL;
	int status = -1, err;
	pid_t pid;

	if (pipe2(in_pipe, O_CLOEXEC) < 0 || pipe2(out_pipe, O_CLOEXEC) < 0)
		goto out;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in_pipe[0], 0);
	if (out != NULL)
		posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
	/* the daemon blocks its signals outside epoll_pwait(): the child
	 * must not inherit that, or a stuck iptables-restore ignores TERM */
	sigemptyset(&none);
	posix_spawnattr_init(&attr);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
	err = posix_spawnp(&pid, argv[0], &fa, &attr, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (err != 0) {
		log_err("cannot run %s: %s", argv[0], strerror(err));
		goto out;
	}
	close(in_pipe[0]);
	close(out_pipe[1]);
	in_pipe[0] = out_pipe[1] = -1;
	if (input != NULL) {
		size_t left = strlen(input);
		const char *p = input;
		void (*old)(int) = signal(SIGPIPE, SIG_IGN);

		while (left > 0) {
			ssize_t n = write(in_pipe[1], p, left);
			if (n <= 0)
				break;
			p += n;
			left -= (size_t)n;
		}
		signal(SIGPIPE, old);
	}
	close(in_pipe[1]);
	in_pipe[1] = -1;
	for (;;) {
		ssize_t n;

		if (len + 4096 + 1 > cap) {
			char *nb = realloc(buf, cap = cap * 2 + 8192);
			if (nb == NULL)
				break;
			buf = nb;
		}
		n = read(out_pipe[0], buf + len, cap - len - 1);
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	if (buf != NULL)
		buf[len] = '\0';
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
out:
	for (int i = 0; i < 2; i++) {
		if (in_pipe[i] >= 0)
			close(in_pipe[i]);
		if (out_pipe[i] >= 0)
			close(out_pipe[i]);
	}
	if (out != NULL)
		*out = buf;
	else
		free(buf);
	return status;
}
