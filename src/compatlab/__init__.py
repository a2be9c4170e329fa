"""compatlab: a compatibility lab for kernel-touching updates."""
