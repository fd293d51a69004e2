"""Backends turn leases into kernel state; pyflannel has one, VXLAN (:mod:`.vxlan`)."""
