#!/bin/bash
# Set up the inside of a throw-away Ganeti node, then wait to be killed.
#
# Run by tests/cluster.py as pid 1 of fresh mount, UTS, network and pid
# namespaces (`unshare --mount --uts --net --pid --fork --mount-proc`).
# $1 is the host state directory prepared by cluster.py; every directory
# Ganeti writes to is bind-mounted from there, so nothing reaches the host
# and the host can read every file the cluster writes.  When this process
# dies, the kernel kills every process of the pid namespace (the Ganeti
# daemons included) and the mount namespace with its mounts goes away.
set -euo pipefail

state=$1

# unshare already made the mounts private; saying so again costs nothing
# and guarantees no bind mount below propagates to the host.
mount --make-rprivate /

# "mounts" lists "NAME INSIDE-PATH" pairs written by cluster.py
# (PRIVATE_MOUNTS).  /run and /srv are replaced whole because /run/ganeti
# and /srv/ganeti do not exist on the host and creating mount points there
# would leak; a private /run also hides /run/systemd/system, so daemon-util
# starts daemons with start-stop-daemon instead of the host's systemctl.
while read -r name inside; do
    mount --bind "$state/$name" "$inside"
done < "$state/mounts"

hostname "$(cat "$state/hostname")"
ip link set lo up
# Every address is a /32 on lo: a wider prefix would make the cluster IP
# look taken to gnt-cluster init's "is the IP already in use" check.
while read -r addr; do
    ip addr add "$addr/32" dev lo
done < "$state/addresses"

touch "$state/ready"

# Stay alive as the namespace's init; bash reaps the daemons' orphans
# whenever a child exits, so no zombies pile up.
while :; do
    sleep 3600 &
    wait $! || true
done
