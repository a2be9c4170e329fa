// SPDX-License-Identifier: GPL-2.0
/*
 * acme_sensor - boot-start driver of the compatlab demo candidate, Acme Sensor 7.11.1.
 *
 * The driver watches process execution (a probe on the sched_process_exec tracepoint)
 * and, on every event, runs the rules of its content ("channel") file, read at load
 * time from the path in the `channel` parameter. Channel file format, one per line:
 *   channel NUMBER                  the content version
 *   watch TRACEPOINT                the tracepoint to attach to
 *   neighbour TRACEPOINT OFFSET     coexistence rule: for every *other* probe attached
 *                                   to TRACEPOINT, read the product tag at OFFSET
 *                                   into that probe's private data
 *
 * THE DEFECT (deliberate, it is the demo): the interpreter trusts the neighbour's
 * private-data pointer. A neighbour that registered its probe with no private data
 * (other-edr does) turns the read into a load from address 0 + OFFSET: a kernel-mode
 * page fault on a not-present page -> Oops -> panic under panic_on_oops=1, the Linux
 * analogue of bugcheck 0x50 PAGE_FAULT_IN_NONPAGED_AREA. With no neighbour on the
 * tracepoint the rule finds nothing and the sensor runs normally.
 */
#include <linux/kernel.h>
#include <linux/kernel_read_file.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/tracepoint.h>
#include <linux/vmalloc.h>

#define ACME_MAX_RULES 8
#define ACME_MAX_CHANNEL (64 * 1024)
#define ACME_PRODUCT_TAG 0x454d4341	/* "ACME" */

static char *channel = "/opt/acme-sensor/channel/C-00000312.chn";
module_param(channel, charp, 0444);
MODULE_PARM_DESC(channel, "path of the content (channel) file");

static unsigned long events;
module_param(events, ulong, 0444);
MODULE_PARM_DESC(events, "process executions seen");

static unsigned long neighbours;
module_param(neighbours, ulong, 0444);
MODULE_PARM_DESC(neighbours, "other products' probes seen by the coexistence rules");

static unsigned int channel_number;
module_param(channel_number, uint, 0444);
MODULE_PARM_DESC(channel_number, "content version of the loaded channel file");

struct acme_rule {
	struct tracepoint *tp;
	unsigned long offset;
};

static struct tracepoint *watch_tp;
static struct acme_rule rules[ACME_MAX_RULES];
static int nr_rules;

struct tp_lookup {
	const char *name;
	struct tracepoint *tp;
};

static void tp_match(struct tracepoint *tp, void *priv)
{
	struct tp_lookup *l = priv;

	if (!strcmp(tp->name, l->name))
		l->tp = tp;
}

static struct tracepoint *tp_find(const char *name)
{
	struct tp_lookup l = { .name = name };

	for_each_kernel_tracepoint(tp_match, &l);
	return l.tp;
}

static void acme_exec(void *data, struct task_struct *p, pid_t old_pid,
		      struct linux_binprm *bprm);

/* Coexistence rule: inspect the other probes on r->tp. Runs inside the tracepoint
 * (preemption off), so the probe array is stable here. */
static noinline void acme_check_neighbours(const struct acme_rule *r)
{
	struct tracepoint_func *f = rcu_dereference_sched(r->tp->funcs);
	u32 tag;

	for (; f && f->func; f++) {
		if (f->func == acme_exec)
			continue;
		/* BUG: f->data is not checked; NULL + offset is dereferenced. */
		tag = READ_ONCE(*(u32 *)((char *)f->data + r->offset));
		if (tag != ACME_PRODUCT_TAG)	/* not one of our own products */
			WRITE_ONCE(neighbours, neighbours + 1);
	}
}

static void acme_exec(void *data, struct task_struct *p, pid_t old_pid,
		      struct linux_binprm *bprm)
{
	int i;

	WRITE_ONCE(events, events + 1);
	for (i = 0; i < nr_rules; i++)
		acme_check_neighbours(&rules[i]);
}

static int acme_parse_line(char *line)
{
	char name[64];
	unsigned long offset;
	unsigned int number;

	line = strim(line);
	if (!*line || *line == '#')
		return 0;
	if (sscanf(line, "channel %u", &number) == 1) {
		channel_number = number;
		return 0;
	}
	if (sscanf(line, "watch %63s", name) == 1) {
		watch_tp = tp_find(name);
		if (!watch_tp) {
			pr_err("acme_sensor: no tracepoint %s\n", name);
			return -ENOENT;
		}
		return 0;
	}
	if (sscanf(line, "neighbour %63s %li", name, &offset) == 2) {
		if (nr_rules == ACME_MAX_RULES)
			return -E2BIG;
		rules[nr_rules].tp = tp_find(name);
		if (!rules[nr_rules].tp) {
			pr_err("acme_sensor: no tracepoint %s\n", name);
			return -ENOENT;
		}
		rules[nr_rules].offset = offset;
		nr_rules++;
		return 0;
	}
	pr_err("acme_sensor: channel file: cannot parse '%s'\n", line);
	return -EINVAL;
}

static int acme_load_channel(const char *path)
{
	void *buf = NULL;
	size_t size;
	ssize_t len;
	char *text, *line;
	int err = 0;

	len = kernel_read_file_from_path(path, 0, &buf, ACME_MAX_CHANNEL, &size,
					 READING_UNKNOWN);
	if (len < 0) {
		pr_err("acme_sensor: cannot read channel file %s (%zd)\n", path, len);
		return len;
	}
	text = kmemdup_nul(buf, len, GFP_KERNEL);
	vfree(buf);
	if (!text)
		return -ENOMEM;
	line = text;
	while (line && !err) {
		char *next = strchr(line, '\n');

		if (next)
			*next++ = '\0';
		err = acme_parse_line(line);
		line = next;
	}
	kfree(text);
	if (!err && !watch_tp) {
		pr_err("acme_sensor: channel file has no watch line\n");
		err = -EINVAL;
	}
	return err;
}

static int __init acme_sensor_init(void)
{
	int err;

	err = acme_load_channel(channel);
	if (err)
		return err;
	err = tracepoint_probe_register(watch_tp, acme_exec, NULL);
	if (err)
		return err;
	pr_info("acme_sensor: 7.11.1 channel %u (%d coexistence rules), watching %s\n",
		channel_number, nr_rules, watch_tp->name);
	return 0;
}

static void __exit acme_sensor_exit(void)
{
	tracepoint_probe_unregister(watch_tp, acme_exec, NULL);
	tracepoint_synchronize_unregister();
	pr_info("acme_sensor: unloaded\n");
}

module_init(acme_sensor_init);
module_exit(acme_sensor_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("compatlab demo");
MODULE_DESCRIPTION("Acme Sensor boot-start driver (compatlab demo candidate)");
MODULE_VERSION("7.11.1");
