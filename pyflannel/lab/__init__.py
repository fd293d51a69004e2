"""The seed demo on one machine: network namespaces as the etcd host, a router and the cells."""
