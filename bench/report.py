#!/usr/bin/python3
"""report.py: turn bench/run.sh's raw measurements into the table and JSON.

    report.py RAW.tsv META.tsv OUT.json

RAW holds one measurement a line: repetition, test, case, key, value
(repetition 0 for the phases that run once).  Every figure of a case is
the median over the repetitions; a ratio is taken of those medians, and
the ratio of each repetition is kept in the JSON too, since the cases of
one repetition ran minutes apart at most while repetitions drift with the
machine's load.  Prints the table on stdout and writes OUT.json.
"""
import json
import statistics
import sys
from collections import defaultdict

CASES = ["A", "B", "C", "D", "E"]
CASE_NAMES = {
    "A": "kernel path, no queue",
    "B": "nfq_baseline (thinnest NFQUEUE consumer)",
    "C": "divertd + div_pass (divert)",
    "D": "divertd + div_pass -n (tee)",
    "E": "divertd lends the queue to direct_client -b: the direct path's floor "
         "(batched NF_REPEAT with the re-entry mark, no copy to a program)",
}
TRAFFIC = [("udp64", "UDP 64 B"), ("udp1400", "UDP 1400 B"), ("tcp", "TCP bulk")]
NOTES = {
    "sizes": "IPv4 packet lengths; Gbit/s counts IP bytes (TCP: payload bytes)",
    "throughput": "medians over repetitions; packets/s over the receiver's window; "
                  "TCP packets are those the router forwarded (GSO packets count once)",
    "latency": "each case on its own router, RTT of 64-byte UDP, one in flight",
    "latency_interleaved": "A, B and C in one router (ports 7001, 7002, 7003), round "
                           "trips taken in turn; A's packets cross divertd's rules "
                           "without matching, and conntrack is on for all three",
    "cpu_ns_per_packet": "/proc/PID/schedstat per delivered packet, including kernel "
                         "work done in the process's system calls",
    "memory": "divertd VmRSS growth per held packet; the packets stay in the kernel",
}


def num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else f


def load(path):
    """{(test, case): {key: {rep: value}}}"""
    data = defaultdict(lambda: defaultdict(dict))
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                continue
            rep, test, case, key, value = parts
            data[(test, case)][key][int(rep)] = num(value)
    return data


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def rnd(x, digits=3):
    return round(x, digits) if isinstance(x, float) else x


def per_rep(data, test, case, fn):
    """fn(values of one repetition) for every repetition of (test, case)."""
    keys = data.get((test, case))
    if not keys:
        return {}
    reps = sorted({r for vals in keys.values() for r in vals})
    out = {}
    for r in reps:
        try:
            out[r] = fn({k: v.get(r) for k, v in keys.items()})
        except (TypeError, ZeroDivisionError, KeyError):
            out[r] = None
    return out


# per-process counters recorded as PREFIX + process name, reported per
# packet under these names
PER_PACKET = [("cpu_ns_", "cpu_ns_per_packet"),
              ("instructions_", "instructions_per_packet"),
              ("sys_enter_", "syscalls_per_packet"),
              ("context-switches_", "context_switches_per_packet")]


def per_packet(f, v, packets):
    """Add each per-process counter of v, divided by packets, to f, and
    divertd's own counters of the run as they are."""
    d = {k[8:]: x for k, x in v.items() if k.startswith("divertd_") and x is not None}
    if d:
        f["divertd"] = d
    for prefix, name in PER_PACKET:
        d = {k[len(prefix):]: x / packets for k, x in v.items()
             if k.startswith(prefix) and x is not None}
        if d:
            d["total"] = sum(d.values())
            f[name] = d


def udp_figures(v):
    secs, rcv = v.get("seconds"), v.get("received")
    if not secs or not rcv:
        return None
    f = {
        "pps": (rcv - 1) / secs,
        "gbps": v["bytes"] * 8 / secs / 1e9,
        "sent": v.get("sent"),
        "received": rcv,
        "duplicates": rcv - (v.get("unique") or rcv),
        "loss": 1 - (v.get("unique") or rcv) / v["sent"] if v.get("sent") else None,
        "send_pps": v.get("send_pps"),
        "queue_drops": v.get("queue_drops"),
    }
    per_packet(f, v, rcv)
    return f


def tcp_figures(v):
    secs, nbytes = v.get("seconds"), v.get("bytes")
    if not secs or not nbytes:
        return None
    pk = v.get("router_packets") or 0
    f = {
        "gbps": nbytes * 8 / secs / 1e9,
        "bytes": nbytes,
        "pps": pk / secs,
        "packets": pk,
        "avg_packet_bytes": v["router_bytes"] / pk if pk else None,
    }
    if pk:
        per_packet(f, v, pk)
    return f


def med_dict(reps):
    """Median of each numeric field (one level of nesting) over repetitions."""
    reps = [r for r in reps if r]
    if not reps:
        return None
    out = {}
    for k in reps[0]:
        vals = [r.get(k) for r in reps]
        if isinstance(vals[0], dict):
            out[k] = {kk: rnd(median([x.get(kk) for x in vals if x])) for kk in vals[0]}
        else:
            out[k] = rnd(median(vals))
    return out


def main():
    raw, meta_path, out_path = sys.argv[1:4]
    data = load(raw)
    meta = {}
    with open(meta_path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            meta[k] = num(v) if num(v) is not None else v

    result = {"meta": meta, "cases": CASE_NAMES, "notes": NOTES, "throughput": {},
              "ratios": {}, "per_rep_ratios": {}}

    # --- throughput, per traffic and case
    for test, _ in TRAFFIC:
        fig = tcp_figures if test == "tcp" else udp_figures
        result["throughput"][test] = {}
        reps = {}
        for c in CASES:
            reps[c] = per_rep(data, test, c, fig)
            result["throughput"][test][c] = med_dict(list(reps[c].values()))
        t = result["throughput"][test]
        key = "gbps" if test == "tcp" else "pps"

        def get(c):
            return (t.get(c) or {}).get(key)
        result["ratios"][test] = {
            "C/B": rnd(ratio(get("C"), get("B"))),
            "C/A": rnd(ratio(get("C"), get("A"))),
            "D/B": rnd(ratio(get("D"), get("B"))),
            "B/A": rnd(ratio(get("B"), get("A"))),
            "E/B": rnd(ratio(get("E"), get("B"))),
        }
        pr = {}
        for r in sorted(reps["C"]):
            c_, b_ = reps["C"].get(r), (reps["B"] or {}).get(r)
            if c_ and b_:
                pr[r] = rnd(ratio(c_[key], b_[key]))
        result["per_rep_ratios"][test] = {"C/B": pr}

    # --- divertd's counters for the main C and D runs (last repetition)
    result["divertd_counters"] = {}
    for c in ("C", "D"):
        keys = data.get(("all", c), {})
        result["divertd_counters"][c] = {
            k[8:]: v[max(v)] for k, v in keys.items() if v}

    # --- latency: each case on its own router ("rtt"), and A, B and C in
    # one router with their round trips interleaved ("rtt_mix")
    def latency(test, cases):
        lat = {}
        for c in cases:
            reps = per_rep(data, test, c, lambda v: {k: v.get(k) for k in (
                "count", "lost", "mean_us", "p50_us", "p90_us", "p99_us", "p999_us",
                "max_us")})
            lat[c] = med_dict(list(reps.values()))
        a = lat.get("A") or {}
        for c in ("B", "C"):
            cc = lat.get(c) or {}
            if a and cc:
                lat["added_by_" + c] = {
                    q: rnd(cc[q] - a[q], 2) for q in ("p50_us", "p99_us")
                    if cc.get(q) is not None and a.get(q) is not None}
        return lat
    result["latency"] = latency("rtt", CASES)
    result["latency_interleaved"] = latency("rtt_mix", ("A", "B", "C"))
    lat = result["latency_interleaved"]
    if not (lat.get("B") and lat.get("C")):
        lat = result["latency"]

    # --- memory
    m = {k: v.get(0) for k, v in data.get(("memory", "C"), {}).items()}
    mem = None
    if m.get("rss_held_kb") and m.get("held_kernel"):
        held = m["held_kernel"]
        per = (m["rss_held_kb"] - m["rss_idle_kb"]) * 1024 / held
        mem = {
            "packets_held": held,
            "packets_held_divertd": m.get("held_divertd"),
            "packet_bytes": m["packet_size"],
            "rss_idle_kb": m["rss_idle_kb"],
            "rss_held_kb": m["rss_held_kb"],
            "divertd_bytes_per_held_packet": rnd(per, 1),
            "divertd_bytes_beyond_packet": rnd(per - m["packet_size"], 1),
        }
    result["memory"] = mem

    # --- cores: two ports against one, a stopped program
    def two_flow_pps(v):
        n = v["received_1"] + v["received_2"] - 2
        t0 = min(v["first_ns_1"], v["first_ns_2"])
        t1 = max(v["last_ns_1"], v["last_ns_2"])
        out = {"pps_total": n / ((t1 - t0) / 1e9), "pps_port_9000": v["pps_1"],
               "pps_port_9001": v["pps_2"], "offered_pps_each": v.get("offered_pps")}
        per_packet(out, v, n)
        return out
    scale = {}
    for c in ("B", "C"):
        cap = per_rep(data, "scale0", c, udp_figures).get(0)
        one = per_rep(data, "scale1", c, udp_figures).get(0)
        two = per_rep(data, "scale2", c, two_flow_pps).get(0)
        if cap and one and two:
            scale[c] = {"one_port_flat_out_pps": rnd(cap["pps"]),
                        "one_port_pps": rnd(one["pps"]),
                        "two_ports": {k: rnd(x) if not isinstance(x, dict) else x
                                      for k, x in two.items()},
                        "two_over_one": rnd(ratio(two["pps_total"], one["pps"]))}
    stall = per_rep(data, "stall", "C", udp_figures).get(0)
    st = {k: v.get(0) for k, v in data.get(("stall", "C"), {}).items()}
    if stall and "C" in scale:
        scale["stall"] = {
            "live_port_pps": rnd(stall["pps"]),
            "live_over_unstalled": rnd(ratio(stall["pps"], scale["C"]["one_port_flat_out_pps"])),
            "stopped_port_sent": st.get("stalled_sent"),
            "stopped_port_delivered": st.get("stalled_received"),
            "stopped_port_held_in_queue": st.get("stalled_held"),
            "divertd_full_drops": st.get("divertd_full"),
            "divertd_evicted": st.get("divertd_evicted"),
        }
    result["cores"] = scale

    # --- CPU per packet: instructions if perf can count them, else time
    cpu = {}
    for test, _ in TRAFFIC:
        for c in ("B", "C", "D", "E"):
            t = (result["throughput"].get(test) or {}).get(c) or {}
            if t.get("cpu_ns_per_packet"):
                cpu.setdefault(test, {})[c] = t["cpu_ns_per_packet"]
    result["cpu_ns_per_packet"] = cpu
    insn = ((result["throughput"]["udp64"].get("C") or {}).get("instructions_per_packet"))
    result["instructions_per_diverted_packet"] = insn
    if insn is None:
        result["instructions_unavailable_because"] = meta.get("perf_why") or "not measured"

    # --- targets
    r = result["ratios"]
    targets = {}

    def target(name, value, ok, rule):
        targets[name] = {"value": value, "rule": rule,
                         "met": None if value is None else bool(ok)}
    v = r["udp64"]["C/B"]
    target("udp64_C_over_B", v, v is not None and v >= 0.8, ">= 0.8")
    v = r["tcp"]["C/B"]
    target("tcp_C_over_B", v, v is not None and v >= 0.7, ">= 0.7")
    b99, c99 = (lat.get("B") or {}).get("p99_us"), (lat.get("C") or {}).get("p99_us")
    v = rnd(c99 - b99, 2) if b99 is not None and c99 is not None else None
    target("latency_p99_C_minus_B_us", v, v is not None and v <= 50,
           "<= 50 (interleaved round trips where measured)")
    v = mem["divertd_bytes_beyond_packet"] if mem else None
    target("memory_divertd_bytes_beyond_packet", v, v is not None and v <= 512,
           "<= 512 (RSS growth per held packet minus its size; negative: "
           "the bytes stay in the kernel's queue)")
    v = (scale.get("C") or {}).get("two_over_one")
    target("two_ports_over_one", v, v is not None and v >= 1.1,
           ">= 1.1 (the total rises with a second port)")
    v = (scale.get("stall") or {}).get("live_over_unstalled")
    target("stalled_neighbour_live_over_unstalled", v, v is not None and v >= 0.8,
           ">= 0.8 (a stopped program does not stall another port)")
    result["targets"] = targets

    result["raw"] = [
        {"rep": r, "test": t, "case": c, "key": k, "value": v}
        for (t, c), keys in sorted(data.items()) for k, vals in sorted(keys.items())
        for r, v in sorted(vals.items())]
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1, sort_keys=False)
        f.write("\n")
    print_table(result)
    print("\nJSON: " + out_path)


def fmt(x, spec="{:,.0f}", none="-"):
    return none if x is None else spec.format(x)


def print_table(res):
    m = res["meta"]
    print()
    print("divertd benchmark  %s  kernel %s  %s CPUs  %s  %s repetition(s), medians%s"
          % (m.get("date"), m.get("kernel"), m.get("cpus"), m.get("git"), m.get("reps"),
             "  (--quick)" if m.get("quick") else ""))
    print("load average %s at start, %s at end; %s other network namespaces at start "
          "(other work on the machine makes figures noisy)"
          % (m.get("loadavg_start"), m.get("loadavg_end"), m.get("other_netns_at_start")))
    for c in CASES:
        print("  %s  %s" % (c, CASE_NAMES[c]))
    print("div_pass: SO_RCVBUF %s, %s" % (
        "%s bytes" % fmt(m.get("rcvbuf")) if m.get("rcvbuf") else "FreeBSD's default (65,636 bytes)",
        "through the shared-memory ring" if m.get("ring", 1) else "without the ring (DIVERT_RING=0)"))
    print()
    if any(res["throughput"][t].get(c) for t, _ in TRAFFIC for c in CASES):
        print_throughput(res)
    insn = res.get("instructions_per_diverted_packet")
    print("instructions per diverted packet: %s" % (
        ", ".join("%s %s" % (k, fmt(v)) for k, v in insn.items()) if insn
        else "n/a (" + res.get("instructions_unavailable_because", "") + ")"))
    print_rest(res)


def print_throughput(res):
    print("%-11s %-4s %12s %9s %7s %12s %12s" % (
        "traffic", "case", "packets/s", "Gbit/s", "loss", "avg bytes", "CPU ns/pkt"))
    for test, label in TRAFFIC:
        for c in CASES:
            t = res["throughput"][test].get(c)
            if not t:
                print("%-11s %-4s %12s" % (label, c, "(no data)"))
                continue
            cpu = (t.get("cpu_ns_per_packet") or {}).get("total")
            if test == "tcp":
                avg, loss = t.get("avg_packet_bytes"), None
            else:
                avg = t["gbps"] * 1e9 / 8 / t["pps"] if t.get("pps") else None
                loss = t.get("loss")
            print("%-11s %-4s %12s %9s %7s %12s %12s" % (
                label if c == "A" else "", c, fmt(t.get("pps")), fmt(t.get("gbps"), "{:.3f}"),
                fmt(loss * 100 if loss is not None else None, "{:.1f}%"),
                fmt(avg), fmt(cpu)))
    print()
    print("%-11s %7s %7s %7s %7s %7s   (packets/s; TCP: Gbit/s)" % (
        "ratios", "C/B", "C/A", "D/B", "B/A", "E/B"))
    for test, label in TRAFFIC:
        r = res["ratios"][test]
        print("%-11s %7s %7s %7s %7s %7s" % (label, fmt(r["C/B"], "{:.2f}"), fmt(r["C/A"], "{:.2f}"),
                                             fmt(r["D/B"], "{:.2f}"), fmt(r["B/A"], "{:.2f}"),
                                             fmt(r.get("E/B"), "{:.2f}")))
    print()
    print("per delivered packet (TCP: per forwarded GSO packet), by process:")
    for test, label in TRAFFIC:
        for c in ("B", "C", "D", "E"):
            t = res["throughput"][test].get(c) or {}
            parts = []
            for key, what, spec in (("cpu_ns_per_packet", "CPU ns", "{:,.0f}"),
                                    ("syscalls_per_packet", "syscalls", "{:.2f}"),
                                    ("context_switches_per_packet", "switches", "{:.3f}"),
                                    ("instructions_per_packet", "instructions", "{:,.0f}")):
                d = t.get(key)
                if d:
                    parts.append("%s %s" % (what, " + ".join(
                        "%s %s" % (fmt(v, spec), k) for k, v in d.items() if k != "total")))
            if parts:
                print("  %-10s %s  %s" % (label if c == "B" else "", c, "; ".join(parts)))
    print("divertd's counters per run (read from the queue / dropped: program's socket full):")
    for test, label in TRAFFIC:
        for c in ("C", "D"):
            d = (res["throughput"][test].get(c) or {}).get("divertd")
            if d:
                print("  %-10s %s  read %s, diverted %s, teed %s, full %s, kernel drops %s"
                      % (label if c == "C" else "", c, fmt(d.get("received")),
                         fmt(d.get("diverted")), fmt(d.get("teed")), fmt(d.get("full")),
                         fmt(d.get("kernel_drops"))))


def print_rest(res):
    for key, title in (("latency", "latency, each case alone (us)"),
                       ("latency_interleaved", "latency, A B C interleaved (us)")):
        lat = res.get(key) or {}
        if not any(lat.get(c) for c in CASES):
            continue
        print()
        print("%-32s %9s %9s %9s %9s %9s %6s" % (
            title, "p50", "p90", "p99", "p99.9", "max", "lost"))
        for c in CASES:
            x = lat.get(c)
            if x:
                print("%-32s %9s %9s %9s %9s %9s %6s" % (
                    "%s (%s round trips)" % (c, fmt(x.get("count"))),
                    fmt(x["p50_us"], "{:.1f}"), fmt(x["p90_us"], "{:.1f}"),
                    fmt(x["p99_us"], "{:.1f}"), fmt(x["p999_us"], "{:.1f}"),
                    fmt(x["max_us"], "{:.1f}"), fmt(x["lost"])))
        for c in ("B", "C"):
            x = lat.get("added_by_" + c)
            if x:
                print("%-32s %9s %9s %9s" % ("added by %s (%s - A)" % (c, c),
                                             fmt(x.get("p50_us"), "{:.1f}"), "",
                                             fmt(x.get("p99_us"), "{:.1f}")))
    mem = res.get("memory")
    print()
    if mem:
        print("memory: %s packets of %s bytes held (divertd counts %s): divertd RSS %s kB idle, "
              "%s kB held" % (fmt(mem["packets_held"]), mem["packet_bytes"],
                              fmt(mem["packets_held_divertd"]), fmt(mem["rss_idle_kb"]),
                              fmt(mem["rss_held_kb"])))
        print("        = %s bytes per held packet in divertd (%s beyond the packet's bytes: "
              "the packets themselves stay in the kernel's queue)"
              % (fmt(mem["divertd_bytes_per_held_packet"], "{:.1f}"),
                 fmt(mem["divertd_bytes_beyond_packet"], "{:.1f}")))
    else:
        print("memory: no data")
    cores = res.get("cores") or {}
    for c in ("B", "C"):
        x = cores.get(c)
        if x:
            print("cores %s: one port %s pkt/s flat out; offered %s pkt/s per port: one port "
                  "%s, two ports %s total (%s + %s) = x%s"
                  % (c, fmt(x["one_port_flat_out_pps"]), fmt(x["two_ports"]["offered_pps_each"]),
                     fmt(x["one_port_pps"]), fmt(x["two_ports"]["pps_total"]),
                     fmt(x["two_ports"]["pps_port_9000"]), fmt(x["two_ports"]["pps_port_9001"]),
                     fmt(x["two_over_one"], "{:.2f}")))
    d = (cores.get("C") or {}).get("two_ports", {}).get("divertd")
    if d:
        print("        divertd in the two-port run: read %s, diverted %s, full %s, kernel drops %s"
              % (fmt(d.get("received")), fmt(d.get("diverted")), fmt(d.get("full")),
                 fmt(d.get("kernel_drops"))))
    x = cores.get("stall")
    if x:
        print("stopped program: the other port carries %s pkt/s = x%s of unstalled; "
              "stopped port: %s sent, %s delivered, %s held; divertd dropped %s (a socket "
              "full, either port), evicted %s"
              % (fmt(x["live_port_pps"]), fmt(x["live_over_unstalled"], "{:.2f}"),
                 fmt(x["stopped_port_sent"]), fmt(x["stopped_port_delivered"]),
                 fmt(x["stopped_port_held_in_queue"]),
                 fmt(x["divertd_full_drops"]), fmt(x["divertd_evicted"])))
    for c, d in (res.get("divertd_counters") or {}).items():
        if d:
            print("divertd counters, case %s: %s" % (c, ", ".join(
                "%s %s" % (k, fmt(v)) for k, v in sorted(d.items()))))
    print()
    print("targets:")
    for name, t in res["targets"].items():
        state = {True: "met", False: "MISSED", None: "no data"}[t["met"]]
        print("  %-40s %10s  %-8s (%s)" % (name, fmt(t["value"], "{}"), state, t["rule"]))


if __name__ == "__main__":
    main()
