#!/inputs/busybox sh
echo from a host script
