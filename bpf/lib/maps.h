/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Stands for the unit's maps and their accessors, which are generated from
 * xdp_teredo/datapath/registry.py into the text bcc compiles (datapath/source.py):
 * bcc rewrites map calls only in that text, never in a header (docs/kernel-notes.md).
 * Accessors: NAME_get() (one-entry arrays), NAME_lookup, NAME_update, NAME_delete,
 * NAME_insert (NOEXIST), NAME_lookup_or_init (zeroed), NAME_redirect (devmap).
 */
#error "compile bpf/client.c, relay.c and server.c through xdp_teredo/datapath/source.py"
