// SPDX-License-Identifier: GPL-2.0
/*
 * flaky_edr - the kernel driver of "Flaky EDR", a demo security product for compatlab whose
 * fault is its own, not the candidate's.
 *
 * The first time the driver loads at boot after an install it migrates its signature
 * database from the installer's staging format (parameter migrate=1). The migration walks
 * the staged tables through a table pointer the installer never filled in: a kernel-mode
 * read at NULL + 0x8 -> Oops -> panic under oops=panic, during the boot-start hooks. The
 * boot hook clears the "migration pending" flag (on disk, synced) before it loads the
 * driver, so the migration is tried only once: the next boot, and every boot after it, is
 * clean. In a lab run that crash lands on the baseline boot, before any candidate is
 * installed.
 *
 * Otherwise the driver hooks nothing (in particular not sched_process_exec, so the demo
 * candidate acme_sensor has no neighbour to trip over here) and only counts its loads.
 */
#include <linux/module.h>

struct flaky_table {
	const char *name;
	unsigned long entries;
	struct flaky_table *next;
};

struct flaky_db {
	unsigned int version;
	struct flaky_table *staged;	/* the installer is meant to fill this in */
};

static bool migrate;
module_param(migrate, bool, 0444);
MODULE_PARM_DESC(migrate, "migrate the signature database staged by the installer");

static unsigned long signatures;
module_param(signatures, ulong, 0444);
MODULE_PARM_DESC(signatures, "signatures loaded");

static struct flaky_db db = { .version = 2 };	/* .staged: NULL, the defect */

/* BUG: db->staged is never checked; the first table's ->entries is read at NULL + 0x8 and
 * its ->next at NULL + 0x10. */
static noinline unsigned long flaky_migrate_db(const struct flaky_db *d)
{
	const struct flaky_table *t;
	unsigned long total = 0;

	for (t = READ_ONCE(d->staged); ; t = READ_ONCE(t->next)) {
		total += READ_ONCE(t->entries);
		if (!READ_ONCE(t->next))
			break;
	}
	return total;
}

static int __init flaky_edr_init(void)
{
	if (migrate) {
		pr_info("flaky_edr: 1.0.0 migrating the staged signature database (v%u)\n",
			db.version);
		signatures = flaky_migrate_db(&db);
	}
	pr_info("flaky_edr: 1.0.0 loaded (%lu signatures)\n", signatures);
	return 0;
}

static void __exit flaky_edr_exit(void)
{
	pr_info("flaky_edr: unloaded\n");
}

module_init(flaky_edr_init);
module_exit(flaky_edr_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("compatlab demo");
MODULE_DESCRIPTION("Flaky EDR kernel sensor (compatlab demo product: crashes its first boot)");
MODULE_VERSION("1.0.0");
