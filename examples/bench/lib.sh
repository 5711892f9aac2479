# Shell pieces the benchmark scripts share; sourced from the repository root.

# A loopback TCP port nothing answers on now.
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 10000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}
