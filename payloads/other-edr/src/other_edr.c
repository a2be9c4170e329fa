// SPDX-License-Identifier: GPL-2.0
/*
 * other_edr - the kernel driver of "Other EDR", a demo security product for compatlab.
 *
 * Like most Linux EDRs it watches process execution by attaching a probe to the
 * sched_process_exec tracepoint. It keeps its counters in module globals, so it
 * registers the probe with no private data (data == NULL) - legal and common, and the
 * thing a careless neighbour can trip over.
 */
#include <linux/module.h>
#include <linux/string.h>
#include <linux/tracepoint.h>

static unsigned long execs;
module_param(execs, ulong, 0444);
MODULE_PARM_DESC(execs, "process executions seen");

static struct tracepoint *exec_tp;

static void find_tp(struct tracepoint *tp, void *priv)
{
	if (!strcmp(tp->name, "sched_process_exec"))
		*(struct tracepoint **)priv = tp;
}

static void other_edr_exec(void *data, struct task_struct *p, pid_t old_pid,
			   struct linux_binprm *bprm)
{
	WRITE_ONCE(execs, execs + 1);
}

static int __init other_edr_init(void)
{
	int err;

	for_each_kernel_tracepoint(find_tp, &exec_tp);
	if (!exec_tp)
		return -ENOENT;
	err = tracepoint_probe_register(exec_tp, other_edr_exec, NULL);
	if (err)
		return err;
	pr_info("other_edr: 4.2.0 watching %s\n", exec_tp->name);
	return 0;
}

static void __exit other_edr_exit(void)
{
	tracepoint_probe_unregister(exec_tp, other_edr_exec, NULL);
	tracepoint_synchronize_unregister();
	pr_info("other_edr: unloaded\n");
}

module_init(other_edr_init);
module_exit(other_edr_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("compatlab demo");
MODULE_DESCRIPTION("Other EDR kernel sensor (compatlab demo product)");
MODULE_VERSION("4.2.0");
