#!/usr/bin/env bash
# A real Slurm cluster of emulated nodes on this one machine, for tests and demos.
#
#   tools/slurm_local.sh up       install (Debian packages) if needed, configure, start, wait for idle nodes
#   tools/slurm_local.sh down     cancel jobs, stop the daemons by PID, remove the state directory
#   tools/slurm_local.sh status   exit 0 when up, 3 when down, 1 when half up; prints sinfo
#   tools/slurm_local.sh env      print "export SLURM_CONF=..." for eval in a shell
#
# Clients (sbatch, srun, sinfo, scontrol) must see SLURM_CONF; jobs inherit the submitting
# environment (sbatch --export=ALL is the default), so submit from a shell that sourced
# tools/bootstrap.sh and the job runs the project's venv Python.
#
# Environment (all optional):
#   SLURM_LOCAL_STATE_DIR   state, logs, spool, generated config (default /tmp/asteroid-slurm-local)
#   SLURM_LOCAL_CONF_DIR    where slurm.conf and gres.conf are written (default $STATE_DIR/etc)
#   SLURM_LOCAL_NODES       number of emulated nodes (default 2), named node1, node2, ...
#   SLURM_LOCAL_CPUS        CPUs each node claims (default 2; they may oversubscribe the host)
#   SLURM_LOCAL_GPUS        fake GPUs per node for --gpus-per-node jobs (default 0 = no gres)
#   SLURM_LOCAL_CTLD_PORT   slurmctld port (default 6817); node i listens on SLURMD_PORT+i-1
#   SLURM_LOCAL_SLURMD_PORT first slurmd port (default 6818)
#   SLURM_LOCAL_TIMEOUT     seconds to wait for the nodes to become idle (default 60)
#
# What this machine taught (gotchas):
# - No systemd: the daemons run in the foreground (-D) in the background of this script, their PIDs
#   are kept in $STATE_DIR/pids and they are stopped by PID. slurmctld needs a few seconds on SIGTERM.
# - Two nodes on one host: same NodeAddr, different Port=, and %n in SlurmdSpoolDir, SlurmdPidFile,
#   SlurmdLogFile *and* TmpFS (pmix keeps its per-node server directory under TmpFS: "File exists").
# - Each slurmd runs in its own UTS + mount namespace (unshare) with its own hostname and a bind-mounted
#   /etc/hosts naming every node 127.0.0.1. Without it, Open MPI's shared-memory transport segfaults
#   with 2 ranks per node (both "nodes" share a hostname), and MASTER_ADDR taken from
#   `scontrol show hostnames` does not resolve inside the job.
# - libpmix2 must be installed before slurmd starts (mpi/pmix is loaded then); MpiDefault=pmix.
# - MinJobAge=4: otherwise `sbatch --wait` polls only every 32 s. No accounting database (sacct does
#   not work); finished jobs are in $STATE_DIR/log/jobcomp.txt (jobcomp/filetxt) and, for MinJobAge
#   seconds, in `scontrol show job`. The exit code of `sbatch --wait` is the job's exit code.
# - Fake GPUs need gres.conf with AutoDetect=off and File= naming character devices (mknod c 1 3);
#   a count-only Gres line leaves the nodes INVAL and jobs pending forever.
# - SlurmdParameters=config_overrides: nodes may claim more CPUs/memory than the host has.
# - Never purge libmunge2: apt removes PMIx and Open MPI with it.
# - Ports 6817/6818+ are machine-wide; `up` refuses to start if they are taken by something else.
set -euo pipefail

state_dir="${SLURM_LOCAL_STATE_DIR:-/tmp/asteroid-slurm-local}"
conf_dir="${SLURM_LOCAL_CONF_DIR:-$state_dir/etc}"
node_count="${SLURM_LOCAL_NODES:-2}"
cpus_per_node="${SLURM_LOCAL_CPUS:-2}"
gpus_per_node="${SLURM_LOCAL_GPUS:-0}"
ctld_port="${SLURM_LOCAL_CTLD_PORT:-6817}"
slurmd_port="${SLURM_LOCAL_SLURMD_PORT:-6818}"
timeout_s="${SLURM_LOCAL_TIMEOUT:-60}"
export SLURM_CONF="$conf_dir/slurm.conf"
pid_dir="$state_dir/pids"
log_dir="$state_dir/log"
packages=(slurmctld slurmd slurm-client munge openmpi-bin libopenmpi-dev libpmix2)

log() { printf '[slurm_local] %s\n' "$*" >&2; }
die() { printf '[slurm_local] error: %s\n' "$*" >&2; exit 1; }

for var in node_count cpus_per_node gpus_per_node ctld_port slurmd_port timeout_s; do
    [[ "${!var}" =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer, got '${!var}'"
done
[ "$node_count" -ge 1 ] || die "SLURM_LOCAL_NODES must be at least 1"

node_names() { local i; for ((i = 1; i <= node_count; i++)); do echo "node$i"; done; }

# ---------------------------------------------------------------- processes

# pid_running PID: the process exists; a zombie (exited, not yet reaped by its parent) counts as gone.
# pid_alive PID COMM: it also is the program we started (guards against PID reuse).
pid_running() { [ -n "$1" ] && [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
pid_alive() { pid_running "$1" && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]; }

# daemon_pid NAME: the recorded PID of one of our daemons, if it is still that daemon.
daemon_pid() {
    local name="$1" comm pid
    comm="${name%%-*}"  # slurmd-node1 -> slurmd
    pid="$(cat "$pid_dir/$name" 2>/dev/null || true)"
    if pid_alive "$pid" "$comm"; then echo "$pid"; fi
}

wait_gone() {  # wait_gone PID COMM SECONDS
    local pid="$1" comm="$2" deadline=$((SECONDS + $3))
    while pid_alive "$pid" "$comm"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

stop_daemons() {  # stop_daemons SECONDS NAME...: SIGTERM to all at once, SIGKILL after SECONDS
    local grace="$1" name pid
    shift
    local -A pids=()
    for name in "$@"; do
        pid="$(daemon_pid "$name")"
        if [ -n "$pid" ]; then
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids[$name]="$pid"
        fi
    done
    for name in "${!pids[@]}"; do
        pid="${pids[$name]}"
        if ! wait_gone "$pid" "${name%%-*}" "$grace"; then
            log "$name did not stop within $grace s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" "${name%%-*}" 10 || die "cannot stop $name (pid $pid)"
        fi
    done
    for name in "$@"; do rm -f "$pid_dir/$name"; done
}

# ---------------------------------------------------------------- install

installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

install_packages() {
    local missing=() pkg
    for pkg in "${packages[@]}"; do installed "$pkg" || missing+=("$pkg"); done
    [ "${#missing[@]}" -gt 0 ] || return 0
    command -v apt-get >/dev/null || die "missing Debian packages (${missing[*]}) and apt-get is unavailable"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Package scripts must not try to start the daemons (no systemd; we start them ourselves).
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local ok=0
    if compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null &&
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$state_dir/apt.log" 2>&1; then
        ok=1
    else
        log "apt-get update"
        apt-get update -qq >"$state_dir/apt.log" 2>&1 &&
            apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$state_dir/apt.log" 2>&1 &&
            ok=1
    fi
    [ "$made_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
    if [ "$ok" != 1 ]; then
        tail -n 20 "$state_dir/apt.log" >&2
        die "apt-get install ${missing[*]} failed (log: $state_dir/apt.log)"
    fi
}

# ---------------------------------------------------------------- configuration

write_config() {  # write_config DIR: slurm.conf, gres.conf and the nodes' hosts file into DIR
    local dir="$1" mem_mb i name names_line="" ctl_host
    mem_mb="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
    ctl_host="$(hostname -s)"
    mkdir -p "$dir"
    {
        echo "# Generated by tools/slurm_local.sh; $node_count emulated nodes on 127.0.0.1."
        echo "ClusterName=asteroid-local"
        echo "SlurmctldHost=$ctl_host(127.0.0.1)"
        echo "SlurmctldPort=$ctld_port"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "StateSaveLocation=$state_dir/ctld"
        echo "SlurmctldPidFile=$state_dir/run/slurmctld.pid"
        echo "SlurmctldLogFile=$log_dir/slurmctld.log"
        echo "SlurmdSpoolDir=$state_dir/spool/%n"
        echo "SlurmdPidFile=$state_dir/run/slurmd-%n.pid"
        echo "SlurmdLogFile=$log_dir/slurmd-%n.log"
        echo "TmpFS=$state_dir/tmp/%n"
        echo "SlurmdParameters=config_overrides"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "AccountingStorageType=accounting_storage/none"
        echo "JobCompType=jobcomp/filetxt"
        echo "JobCompLoc=$log_dir/jobcomp.txt"
        echo "MpiDefault=pmix"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core"
        echo "SchedulerType=sched/backfill"
        echo "ReturnToService=2"
        echo "MinJobAge=4"
        echo "KillWait=5"
        echo "SlurmdTimeout=60"
        echo "InactiveLimit=0"
        echo "SlurmctldDebug=info"
        echo "SlurmdDebug=info"
        [ "$gpus_per_node" = 0 ] || echo "GresTypes=gpu"
        for ((i = 1; i <= node_count; i++)); do
            name="node$i"
            printf 'NodeName=%s NodeHostname=%s NodeAddr=127.0.0.1 Port=%s CPUs=%s RealMemory=%s' \
                "$name" "$name" "$((slurmd_port + i - 1))" "$cpus_per_node" "$mem_mb"
            [ "$gpus_per_node" = 0 ] || printf ' Gres=gpu:%s' "$gpus_per_node"
            printf ' State=UNKNOWN\n'
            names_line+=" $name"
        done
        echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    } > "$dir/slurm.conf"
    {
        echo "AutoDetect=off"
        if [ "$gpus_per_node" != 0 ]; then
            for ((i = 1; i <= node_count; i++)); do
                echo "NodeName=node$i Name=gpu File=$state_dir/dev/node$i-gpu[0-$((gpus_per_node - 1))]"
            done
        fi
    } > "$dir/gres.conf"
    { cat /etc/hosts; echo "127.0.0.1$names_line"; } > "$dir/hosts"
}

make_fake_gpus() {
    local name g dev
    [ "$gpus_per_node" != 0 ] || return 0
    mkdir -p "$state_dir/dev"
    while read -r name; do
        for ((g = 0; g < gpus_per_node; g++)); do
            dev="$state_dir/dev/$name-gpu$g"
            [ -c "$dev" ] || mknod "$dev" c 1 3 || die "cannot create fake GPU device $dev (mknod)"
        done
    done < <(node_names)
}

# ---------------------------------------------------------------- munge

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        log "munged already running; using it"
        return 0
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        mungekey --create --keyfile /etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    log "starting munged"
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged  # daemonizes; writes /run/munge/munged.pid
    local deadline=$((SECONDS + 10))
    until munge_works; do
        [ "$SECONDS" -lt "$deadline" ] || die "munged does not answer (see /var/log/munge/munged.log)"
        sleep 0.2
    done
    cat /run/munge/munged.pid > "$pid_dir/munged"
}

# ---------------------------------------------------------------- daemons

port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

check_ports_free() {
    local p
    for p in "$ctld_port" $(seq "$slurmd_port" $((slurmd_port + node_count - 1))); do
        if port_in_use "$p"; then
            die "port $p is already in use (another Slurm on this machine? stop it," \
                "or set SLURM_LOCAL_CTLD_PORT/SLURM_LOCAL_SLURMD_PORT)"
        fi
    done
}

start_slurmctld() {
    log "starting slurmctld on port $ctld_port"
    setsid slurmctld -D -i >>"$log_dir/slurmctld.stdout" 2>&1 < /dev/null &
    echo "$!" > "$pid_dir/slurmctld"
    local deadline=$((SECONDS + timeout_s))
    until scontrol ping 2>/dev/null | grep -q 'is UP'; do
        pid_running "$(cat "$pid_dir/slurmctld")" || fail_up "slurmctld exited"
        [ "$SECONDS" -lt "$deadline" ] || fail_up "slurmctld does not answer after $timeout_s s"
        sleep 0.3
    done
}

start_slurmd() {  # start_slurmd NODE PORT
    local name="$1"
    mkdir -p "$state_dir/spool/$name" "$state_dir/tmp/$name"
    log "starting slurmd $name on port $2"
    # Own hostname and /etc/hosts per node; the namespaces die with the last process in them.
    # shellcheck disable=SC2016  # $1/$2 expand in the inner sh, on purpose
    setsid unshare --uts --mount -- sh -c \
        'hostname "$1" && mount --bind "$2" /etc/hosts && exec slurmd -D -N "$1"' \
        sh "$name" "$conf_dir/hosts" >>"$log_dir/slurmd-$name.stdout" 2>&1 < /dev/null &
    echo "$!" > "$pid_dir/slurmd-$name"
}

wait_idle() {
    local deadline=$((SECONDS + timeout_s)) idle name
    while :; do
        while read -r name; do
            pid_running "$(cat "$pid_dir/slurmd-$name")" || fail_up "slurmd $name exited"
        done < <(node_names)
        idle="$(sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 == "idle"' | sort -u | wc -l)"
        [ "$idle" -lt "$node_count" ] || return 0
        [ "$SECONDS" -lt "$deadline" ] ||
            fail_up "nodes not idle after $timeout_s s: $(sinfo -h -N -o '%N=%T' | tr '\n' ' ')"
        sleep 0.3
    done
}

fail_up() {
    log "up failed: $1"
    local f
    for f in "$log_dir"/*.stdout; do
        # Daemons log to their .log file once it is open; earlier errors go only to .stdout.
        [ -s "${f%.stdout}.log" ] && f="${f%.stdout}.log"
        [ -s "$f" ] || continue
        printf -- '--- last lines of %s\n' "$f" >&2
        tail -n 12 "$f" >&2
    done
    stop_all
    die "$1 (daemons stopped; logs kept in $log_dir until 'down')"
}

stop_all() {
    local name
    if [ -n "$(daemon_pid slurmctld)" ]; then
        # Cancel jobs first so their steps (slurmstepd) do not outlive the daemons.
        if [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
            log "cancelling jobs"
            squeue -h -o %i | xargs -r scancel 2>/dev/null || true
            local deadline=$((SECONDS + 20))
            while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
        fi
    fi
    local slurmds=()
    while read -r name; do slurmds+=("slurmd-$name"); done < <(node_names)
    stop_daemons 15 "${slurmds[@]}"
    # slurmctld saves its state on SIGTERM (~2 s). munged has a pid file only if we started it.
    stop_daemons 30 slurmctld munged
}

# ---------------------------------------------------------------- commands

cluster_up() {  # all daemons alive and every node idle or in use
    local name
    [ -n "$(daemon_pid slurmctld)" ] || return 1
    while read -r name; do [ -n "$(daemon_pid "slurmd-$name")" ] || return 1; done < <(node_names)
    local responding
    responding="$(sinfo -h -N -o '%N %T' 2>/dev/null |
        awk '$2 !~ /down|drain|fail|inval|unknown|\*/' | sort -u | wc -l)"
    [ "$responding" -ge "$node_count" ]
}

any_daemon_alive() {
    local f
    for f in "$pid_dir"/*; do
        [ -e "$f" ] || continue
        [ -z "$(daemon_pid "$(basename "$f")")" ] || return 0
    done
    return 1
}

cmd_up() {
    local started=$SECONDS
    if [ -f "$conf_dir/slurm.conf" ] && cluster_up; then
        local tmp
        tmp="$(mktemp -d)"
        write_config "$tmp"
        if cmp -s "$tmp/slurm.conf" "$conf_dir/slurm.conf" && cmp -s "$tmp/gres.conf" "$conf_dir/gres.conf"; then
            rm -rf "$tmp"
            log "already up (SLURM_CONF=$SLURM_CONF)"
            return 0
        fi
        rm -rf "$tmp"
        die "a cluster is up in $state_dir with a different configuration; run '$0 down' first"
    fi
    if [ -d "$pid_dir" ] && any_daemon_alive; then
        log "half-up cluster found; stopping it first"
        stop_all
    fi
    mkdir -p "$state_dir"
    install_packages
    # Start from clean state (old controller state would resurrect old jobs and node states).
    rm -rf "${state_dir:?}/ctld" "${state_dir:?}/spool" "${state_dir:?}/tmp" "${state_dir:?}/run" \
        "$log_dir" "$pid_dir"
    mkdir -p "$state_dir/ctld" "$state_dir/run" "$log_dir" "$pid_dir"
    write_config "$conf_dir"
    make_fake_gpus
    check_ports_free
    start_munge
    start_slurmctld
    local name i=0
    while read -r name; do
        start_slurmd "$name" $((slurmd_port + i))
        i=$((i + 1))
    done < <(node_names)
    wait_idle
    log "up in $((SECONDS - started)) s: $(node_names | tr '\n' ' ')(SLURM_CONF=$SLURM_CONF)"
}

cmd_down() {
    if [ ! -d "$state_dir" ]; then
        log "already down"
        return 0
    fi
    if [ -d "$pid_dir" ]; then stop_all; fi
    rm -rf "${state_dir:?}"
    [ "$conf_dir" = "$state_dir/etc" ] || rm -f "$conf_dir/slurm.conf" "$conf_dir/gres.conf" "$conf_dir/hosts"
    log "down"
}

cmd_status() {
    if cluster_up; then
        log "up (SLURM_CONF=$SLURM_CONF, state in $state_dir)"
        sinfo -N -l >&2 || true
        return 0
    fi
    if [ -d "$pid_dir" ] && any_daemon_alive; then
        log "half up: some daemons are running (state in $state_dir); run '$0 down'"
        return 1
    fi
    log "down"
    return 3
}

require_root() { [ "$(id -u)" = 0 ] || die "'$1' must run as root (daemons, namespaces, /run/munge)"; }

case "${1:-}" in
    up) require_root up; cmd_up ;;
    down) require_root down; cmd_down ;;
    status) cmd_status ;;
    env) printf 'export SLURM_CONF=%q\n' "$SLURM_CONF" ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
