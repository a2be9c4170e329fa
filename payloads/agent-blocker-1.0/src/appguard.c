// SPDX-License-Identifier: GPL-2.0
/*
 * appguard - the application-control driver of "AppGuard 1.0", a compatlab demo candidate:
 * a hardening update that breaks the machine's management agent.
 *
 * It attaches a probe to the sched_process_exec tracepoint and kills, at exec, every
 * program whose name is on its deny list (parameter `deny`, comma separated). The list
 * shipped in 1.0 names qemu-ga, "an unapproved remote-management tool" - the QEMU guest
 * agent the lab drives the machine through. The kill happens before the program runs a
 * single instruction, so the agent never opens its port: the guest boots fully (services
 * run, the serial console says so) but its management channel is dead.
 *
 * Its probe carries private data (its state), unlike other-edr's.
 */
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/string.h>
#include <linux/tracepoint.h>

#define APPGUARD_TAG 0x44524755	/* "UGRD" */

static char *deny = "qemu-ga";
module_param(deny, charp, 0444);
MODULE_PARM_DESC(deny, "comma-separated program names to kill at exec");

static unsigned long blocked;
module_param(blocked, ulong, 0444);
MODULE_PARM_DESC(blocked, "programs killed at exec");

static struct appguard_state {
	u32 tag;
} state = { .tag = APPGUARD_TAG };

static struct tracepoint *exec_tp;

static void find_tp(struct tracepoint *tp, void *priv)
{
	if (!strcmp(tp->name, "sched_process_exec"))
		*(struct tracepoint **)priv = tp;
}

static bool denied(const char *comm)
{
	const char *d = deny;
	size_t n = strlen(comm);

	while (d && *d) {
		const char *end = strchrnul(d, ',');

		if ((size_t)(end - d) == n && !strncmp(d, comm, n))
			return true;
		d = *end ? end + 1 : end;
	}
	return false;
}

static void appguard_exec(void *data, struct task_struct *p, pid_t old_pid,
			  struct linux_binprm *bprm)
{
	if (!denied(p->comm))
		return;
	WRITE_ONCE(blocked, blocked + 1);
	pr_info_ratelimited("appguard: blocked %s (pid %d): not on the allow list\n",
			    p->comm, task_pid_nr(p));
	send_sig(SIGKILL, p, 1);
}

static int __init appguard_init(void)
{
	int err;

	for_each_kernel_tracepoint(find_tp, &exec_tp);
	if (!exec_tp)
		return -ENOENT;
	err = tracepoint_probe_register(exec_tp, appguard_exec, &state);
	if (err)
		return err;
	pr_info("appguard: 1.0 enforcing, deny list: %s\n", deny);
	return 0;
}

static void __exit appguard_exit(void)
{
	tracepoint_probe_unregister(exec_tp, appguard_exec, &state);
	tracepoint_synchronize_unregister();
	pr_info("appguard: unloaded\n");
}

module_init(appguard_init);
module_exit(appguard_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("compatlab demo");
MODULE_DESCRIPTION("AppGuard application control (compatlab demo candidate: kills qemu-ga)");
MODULE_VERSION("1.0");
