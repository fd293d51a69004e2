"""The blog post's flannel demo on one machine: network namespaces as the etcd host, a router
and the cells (see docs/demo.md)."""
