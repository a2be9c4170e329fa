// SPDX-License-Identifier: GPL-2.0
/*
 * fence_filter - the driver of "Fence 1.0", the compatlab demo candidate whose uninstall
 * crashes the machine.
 *
 * Loading it is harmless: it builds a small rule table and keeps it. Unloading it is not:
 * the exit routine frees the table and clears the pointer, then "flushes the rule cache"
 * through that same pointer - a kernel-mode read at NULL + 0x8 in the rmmod that the
 * uninstaller runs -> Oops -> panic under oops=panic. Install and boots are clean; only a
 * rollback finds the defect.
 */
#include <linux/module.h>
#include <linux/slab.h>

struct fence_rules {
	unsigned int count;
	unsigned long hits;
	struct fence_rule {
		unsigned long inode;
		unsigned int action;
	} rule[16];
};

static struct fence_rules *rules;

static unsigned int nr_rules;
module_param(nr_rules, uint, 0444);
MODULE_PARM_DESC(nr_rules, "rules in force");

/* BUG: called after the table is gone; r is not checked. */
static noinline void fence_flush_cache(const struct fence_rules *r)
{
	pr_info("fence_filter: flushing the rule cache (%lu hits)\n", READ_ONCE(r->hits));
}

static int __init fence_filter_init(void)
{
	rules = kzalloc(sizeof(*rules), GFP_KERNEL);
	if (!rules)
		return -ENOMEM;
	rules->count = 3;
	nr_rules = rules->count;
	pr_info("fence_filter: 1.0 loaded (%u rules)\n", nr_rules);
	return 0;
}

static void __exit fence_filter_exit(void)
{
	pr_info("fence_filter: unloading\n");
	kfree(rules);
	WRITE_ONCE(rules, NULL);
	fence_flush_cache(READ_ONCE(rules));
	pr_info("fence_filter: unloaded\n");
}

module_init(fence_filter_init);
module_exit(fence_filter_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("compatlab demo");
MODULE_DESCRIPTION("Fence file filter (compatlab demo candidate: crashes when unloaded)");
MODULE_VERSION("1.0");
