"""The kernel side of pyflannel: everything that reads or writes the kernel's network state.

One folder owns the kernel; nothing outside it opens a netlink socket or imports pyroute2.

* :mod:`.records` — plain records (Link, Neigh, Fdb, Route, RouteEntry, PeerEntries,
  VxlanSpec, KernelState); pure.
* :mod:`.plan` — the desired entries indexed by kernel key, the plan for a set of keys, and
  applying it in two batches; pure apart from the writer it is handed.
* :mod:`.netlink` — the door: the :class:`~pyflannel.kernel.netlink.Netlink` facade the daemon
  talks to (pyroute2 for the device and its address, at start-up and on re-creation), which
  hands out the engine below.
* :mod:`.sync` — :class:`~pyflannel.kernel.sync.KernelSync`: desired entries, mirror and
  batched writer together; keyed syncs for events, full ones for resyncs.
* :mod:`.codec` — rtnetlink requests and replies as bytes (struct); pure.
* :mod:`.rtnl` — a raw NETLINK_ROUTE socket: batched writes with per-request results, dumps.
* :mod:`.monitor` — the notification socket (links, neighbours/FDB, routes).
* :mod:`.mirror` — the kernel's entries for the VXLAN device, folded from dumps and
  notifications; pure.

This package imports nothing itself, so the pure core can load :mod:`.records` without pulling
in pyroute2.
"""
