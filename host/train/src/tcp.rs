//! The data-parallel group over TCP (`TcpGroup`, a `dist::Collective`), which CPU ranks use
//! and GPU ranks use through host copies when NCCL cannot serve them. Rank 0 listens at
//! `MASTER_ADDR:MASTER_PORT`; every other rank connects, greets it with the job's digest and
//! the port of a listener of its own, and gets everyone's address back, so the ranks end up
//! connected pair by pair (a mesh).
//!
//! From three ranks on, a sum is a reduce-scatter then an all-gather over the mesh (as
//! gloo's and NCCL's rings move the same bytes): the buffer is cut into one part per rank;
//! each rank receives its part from every other, adds the copies in rank order, and sends the
//! sum of its part to all. Each rank moves about twice the buffer whatever the world size,
//! where a star through rank 0 made rank 0 carry all of it. Two ranks sum through rank 0,
//! which pipelines better there. Every value is added in rank order either way, so the sums
//! are the same to the bit on any number of ranks and either path.

use crate::dist::{Collective, Placement};
use crate::error::{Result, TrainError};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::time::{Duration, Instant};

pub(crate) fn dist_err(msg: impl std::fmt::Display) -> TrainError {
    TrainError::Stopped(format!("data-parallel group: {msg}"))
}

const MAGIC: &[u8; 8] = b"GALLEYDP";
/// A connection that is not a rank (a port scan) must not hold a rank for the whole timeout:
/// the greeting gets a few seconds.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The greeting's fixed part: magic, rank, world size, listener port, the job's length.
const HEAD: usize = 40;

/// The ranks of a job over TCP, connected pair by pair.
pub struct TcpGroup {
    rank: usize,
    world: usize,
    /// The stream to rank i at index i (None at this rank's own index).
    links: Vec<Option<TcpStream>>,
    /// Where the other ranks' copies of this rank's part arrive, kept from call to call (a
    /// fresh buffer each call faulted in a page per 4 KiB); 8-byte words, so f32 and f64
    /// both fit.
    scratch: Vec<u64>,
    /// NCCL on the GPUs, once the ranks have chosen (None: not yet; Some(None): TCP).
    #[cfg(feature = "cuda")]
    nccl: Option<Option<crate::nccl::Nccl>>,
}

fn hello(rank: usize, world: usize, port: u16, job: &str) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    for v in [rank, world, port as usize, job.len()] {
        h.extend((v as u64).to_le_bytes());
    }
    h.extend(job.as_bytes());
    h
}

/// Sets the timeouts every read and write of the group gives up after.
fn setup(s: &TcpStream, timeout: Duration) -> Result<()> {
    s.set_nodelay(true).map_err(dist_err)?;
    s.set_read_timeout(Some(timeout)).map_err(dist_err)?;
    s.set_write_timeout(Some(timeout)).map_err(dist_err)
}

/// Accepts the ranks in `want` on `listener`, each once, until all have come or `timeout`
/// has passed; a connection that does not greet as a rank of this job is ignored, one that
/// greets as a rank of another job (another world size or config) fails the group. Returns
/// (rank, stream, its address, the port it listens on).
fn accept_ranks(
    listener: &TcpListener,
    want: Range<usize>,
    world: usize,
    job: &str,
    timeout: Duration,
) -> Result<Vec<(usize, TcpStream, SocketAddr, u16)>> {
    listener.set_nonblocking(true).map_err(dist_err)?;
    let mut got: Vec<Option<(TcpStream, SocketAddr, u16)>> = want.clone().map(|_| None).collect();
    let deadline = Instant::now() + timeout;
    while got.iter().any(Option::is_none) {
        let (mut s, from) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(dist_err(format!(
                        "{} of the ranks {want:?} joined within {timeout:?}",
                        got.iter().flatten().count()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(dist_err(e)),
        };
        s.set_nonblocking(false).map_err(dist_err)?;
        s.set_read_timeout(Some(HELLO_TIMEOUT)).map_err(dist_err)?;
        let mut head = [0u8; HEAD];
        if s.read_exact(&mut head).is_err() || &head[..8] != MAGIC {
            tracing::warn!("{from}: not a galley rank; ignored");
            continue;
        }
        setup(&s, timeout)?;
        let num = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap()) as usize;
        let (rank, their_world, port, n) = (num(8), num(16), num(24), num(32));
        let mut theirs = vec![0u8; n.min(1024)];
        s.read_exact(&mut theirs).map_err(dist_err)?;
        if their_world != world || theirs != job.as_bytes() {
            return Err(dist_err(format!(
                "rank {rank} (from {from}) runs another job: world size {their_world} vs \
                 {world}, or another config or GALLEY_DIST_OVERLAP"
            )));
        }
        match got.get_mut(rank.wrapping_sub(want.start)) {
            Some(slot @ None) if want.contains(&rank) => *slot = Some((s, from, port as u16)),
            _ => {
                return Err(dist_err(format!(
                    "rank {rank} (from {from}) is out of range or came twice"
                )));
            }
        }
    }
    Ok(want
        .zip(got)
        .map(|(r, g)| {
            let (s, from, port) = g.expect("every rank came");
            (r, s, from, port)
        })
        .collect())
}

impl TcpGroup {
    /// Joins the group `p` names. `job` (the config's digest) must be the same on every
    /// rank: a rank started with another config is refused, and so is one with another
    /// `GALLEY_DIST_OVERLAP` (the two settings make different calls, which would desynchronise
    /// the streams). Reads give up after `timeout` (a rank that died or hangs fails the others
    /// instead of stopping them for ever).
    pub fn connect(p: &Placement, job: &str, timeout: Duration) -> Result<Self> {
        let job = &format!("{job} overlap={}", crate::overlap::enabled());
        let master = p
            .master
            .clone()
            .ok_or_else(|| dist_err("MASTER_ADDR (and MASTER_PORT) must name rank 0's address"))?;
        let addr = master
            .to_socket_addrs()
            .map_err(|e| dist_err(format!("`{master}`: {e}")))?
            .next()
            .ok_or_else(|| dist_err(format!("`{master}` resolves to no address")))?;
        let world = p.world_size;
        let mut links: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
        if p.rank == 0 {
            let listener = TcpListener::bind(addr).map_err(|e| dist_err(format!("{addr}: {e}")))?;
            let ranks = accept_ranks(&listener, 1..world, world, job, timeout)?;
            // Everyone's listener, as rank 0 reaches it: the address table every rank gets.
            let mut table = Vec::new();
            for (_, _, from, port) in &ranks {
                let a = SocketAddr::new(from.ip(), *port).to_string();
                table.extend((a.len() as u64).to_le_bytes());
                table.extend(a.as_bytes());
            }
            for (r, mut s, _, _) in ranks {
                s.write_all(&table)
                    .map_err(|e| dist_err(format!("rank {r}: {e}")))?;
                links[r] = Some(s);
            }
        } else {
            let deadline = Instant::now() + timeout;
            let connect = |to: SocketAddr| loop {
                match TcpStream::connect(to) {
                    Ok(s) => break Ok(s),
                    Err(e) if Instant::now() > deadline => {
                        break Err(dist_err(format!("rank at {to}: {e}")));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            let mut s = connect(addr)?;
            setup(&s, timeout)?;
            // The ranks above this one connect here, on the address rank 0 is reached from.
            let ip = s.local_addr().map_err(dist_err)?.ip();
            let listener = TcpListener::bind((ip, 0)).map_err(dist_err)?;
            let port = listener.local_addr().map_err(dist_err)?.port();
            s.write_all(&hello(p.rank, world, port, job))
                .map_err(dist_err)?;
            let mut addrs = Vec::new();
            for _ in 1..world {
                let mut len = [0u8; 8];
                s.read_exact(&mut len)
                    .map_err(|e| dist_err(format!("rank 0: {e}")))?;
                let len = u64::from_le_bytes(len) as usize;
                if len > 256 {
                    return Err(dist_err("rank 0 sent an address table that is not one"));
                }
                let mut a = vec![0u8; len];
                s.read_exact(&mut a)
                    .map_err(|e| dist_err(format!("rank 0: {e}")))?;
                let a = String::from_utf8_lossy(&a).parse::<SocketAddr>();
                addrs.push(a.map_err(|e| dist_err(format!("rank 0's address table: {e}")))?);
            }
            links[0] = Some(s);
            // Connect to the ranks below (their listeners were up before rank 0 sent the
            // table), then take the ranks above.
            for (r, &a) in addrs.iter().enumerate().take(p.rank - 1) {
                let s = connect(a)?;
                setup(&s, timeout)?;
                (&s).write_all(&hello(p.rank, world, 0, job))
                    .map_err(dist_err)?;
                links[r + 1] = Some(s);
            }
            for (r, s, _, _) in accept_ranks(&listener, p.rank + 1..world, world, job, timeout)? {
                links[r] = Some(s);
            }
        }
        Ok(Self {
            rank: p.rank,
            world,
            links,
            scratch: Vec::new(),
            #[cfg(feature = "cuda")]
            nccl: None,
        })
    }

    /// The sum, in place: a reduce-scatter (each rank adds the copies of its part, in rank
    /// order), then an all-gather of the summed parts. Each stream carries data both ways at
    /// once: this thread reads while one thread per peer writes. Two ranks take `reduce_pair`.
    /// (Pipelining the phases in pieces of 256 KiB to 64 MiB, adding each piece's copies while
    /// in cache and sending its sum at once, measured no faster at four ranks on a 2-core
    /// machine — 0.70-0.86x gloo's time against 0.80x, `dist-bench --ranks 4` — so it is not
    /// done; where the cores are saturated by the socket copies, overlap cannot pay.)
    fn reduce<T: Elem>(&mut self, buf: &mut [T]) -> Result<()> {
        let (w, me, n) = (self.world, self.rank, buf.len());
        match w {
            1 => return Ok(()),
            2 => return self.reduce_pair(&mut [buf]),
            _ => {}
        }
        let part = |r: usize| n * r / w..n * (r + 1) / w;
        let mine = part(me);
        let len = mine.len();
        let copies: &mut [T] = scratch(&mut self.scratch, len * w);
        let links = &self.links;
        // Reduce-scatter: part r of this rank's buffer to rank r; the copies of this rank's
        // part from every other into its slot of `copies`.
        let linked = |r: &usize| links[*r].is_some();
        let outs = (0..w).filter(linked).map(|r| (r, &buf[part(r)])).collect();
        let ins = copies.chunks_mut(len.max(1)).enumerate().take(w);
        exchange(links, outs, ins.filter(|(r, _)| linked(r)).collect())?;
        let own = &mut buf[mine];
        for (i, x) in own.iter_mut().enumerate() {
            let of = |r: usize| if r == me { *x } else { copies[r * len + i] };
            let mut acc = of(0);
            for r in 1..w {
                acc = acc.add(of(r));
            }
            *x = acc;
        }
        // All-gather: this rank's summed part to every other; part r from rank r.
        let mut parts: Vec<&mut [T]> = Vec::with_capacity(w);
        let mut rest = buf;
        for r in 0..w {
            let (head, tail) = rest.split_at_mut(part(r).len());
            parts.push(head);
            rest = tail;
        }
        let summed: &[T] = std::mem::take(&mut parts[me]) as &[T];
        let outs = (0..w).filter(linked).map(|r| (r, summed)).collect();
        let ins = parts.into_iter().enumerate().filter(|(r, _)| linked(r));
        exchange(links, outs, ins.collect())
    }
}

/// `len` values of the kept receive buffer, grown to hold them if it must.
fn scratch<T: Elem>(words: &mut Vec<u64>, len: usize) -> &mut [T] {
    let n = (len * std::mem::size_of::<T>()).div_ceil(8);
    if words.len() < n {
        words.resize(n, 0);
    }
    &mut bytemuck::cast_slice_mut(&mut words[..n])[..len]
}

/// One exchange of a sum: each `outs` buffer to its rank (a thread each), while this thread
/// reads each `ins` buffer from its rank, in rank order; every stream carries data both ways.
fn exchange<T: Elem>(
    links: &[Option<TcpStream>],
    outs: Vec<(usize, &[T])>,
    ins: Vec<(usize, &mut [T])>,
) -> Result<()> {
    let lost = |r: usize, e: std::io::Error| dist_err(format!("rank {r}: {e}"));
    let link = |r: usize| links[r].as_ref().expect("every other rank is linked");
    std::thread::scope(|sc| {
        let mut writers = Vec::new();
        for (r, out) in outs {
            let mut s = link(r).try_clone().map_err(|e| lost(r, e))?;
            writers.push((r, sc.spawn(move || s.write_all(bytemuck::cast_slice(out)))));
        }
        let mut got = Ok(());
        for (r, into) in ins {
            got = link(r)
                .read_exact(bytemuck::cast_slice_mut(into))
                .map_err(|e| lost(r, e));
            if got.is_err() {
                // The senders may be blocked on ranks that stopped reading.
                abandon(links);
                break;
            }
        }
        for (r, h) in writers {
            let sent = h.join().expect("a sending thread does not panic");
            if let (Ok(()), Err(e)) = (&got, sent) {
                abandon(links);
                got = Err(lost(r, e));
            }
        }
        got
    })
}

/// Shuts every stream of a group whose sum failed: its streams are out of step for good, and
/// this wakes this rank's senders (blocked on peers that stopped reading) and the peers'
/// readers at once, where they would otherwise wait out the group's timeout.
fn abandon(links: &[Option<TcpStream>]) {
    for s in links.iter().flatten() {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
}

impl TcpGroup {
    /// The sum of two ranks, in place: rank 1 sends its buffers in pieces, rank 0 adds each
    /// piece as it arrives (its own first: rank order) and sends the sum straight back. With
    /// two ranks this pipelines better than the two phases of `reduce` (135M values on
    /// loopback: 335 ms against 432, `dist-bench`), which only pays from three ranks on.
    /// Several buffers (a bucket) travel as one message, read and added where they are: the
    /// stream does not see where one ends, so this is their concatenation's sum, bit for bit.
    fn reduce_pair<T: Elem>(&mut self, parts: &mut [&mut [T]]) -> Result<()> {
        let lost = |r: usize, e: std::io::Error| dist_err(format!("rank {r}: {e}"));
        let chunk = (CHUNK_BYTES / std::mem::size_of::<T>()).max(1);
        let other = 1 - self.rank;
        let mut s = self.links[other].as_ref().expect("two ranks are linked");
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if self.rank == 0 {
            let mut theirs = vec![T::zeroed(); chunk.min(total)];
            for part in parts.iter_mut().flat_map(|p| p.chunks_mut(chunk)) {
                let t = &mut theirs[..part.len()];
                s.read_exact(bytemuck::cast_slice_mut(t))
                    .map_err(|e| lost(1, e))?;
                part.iter_mut()
                    .zip(t.iter())
                    .for_each(|(x, y)| *x = x.add(*y));
                s.write_all(bytemuck::cast_slice(part))
                    .map_err(|e| lost(1, e))?;
            }
            return Ok(());
        }
        let mut w = s.try_clone().map_err(|e| lost(0, e))?;
        let sum: &mut [T] = scratch(&mut self.scratch, total);
        let mine: &[&mut [T]] = parts;
        let sent = std::thread::scope(|sc| {
            let writer = sc.spawn(move || {
                for part in mine.iter().flat_map(|p| p.chunks(chunk)) {
                    w.write_all(bytemuck::cast_slice(part))?;
                }
                Ok::<(), std::io::Error>(())
            });
            let got = sum
                .chunks_mut(chunk)
                .try_for_each(|part| s.read_exact(bytemuck::cast_slice_mut(part)));
            let sent = writer.join().expect("the sending thread does not panic");
            got.and(sent)
        });
        sent.map_err(|e| lost(0, e))?;
        let mut at = 0;
        for part in parts.iter_mut() {
            part.copy_from_slice(&sum[at..at + part.len()]);
            at += part.len();
        }
        Ok(())
    }
}

/// Bytes per piece two ranks send: large enough to amortise the calls, small enough that
/// rank 0's adding overlaps the transfer.
const CHUNK_BYTES: usize = 4 << 20;

// The wire format is little-endian; the buffers are sent as their bytes.
const _: () = assert!(cfg!(target_endian = "little"));

/// The element types a group sums.
trait Elem: bytemuck::Pod + Send + Sync {
    fn add(self, o: Self) -> Self;
}

impl Elem for f32 {
    fn add(self, o: Self) -> Self {
        self + o
    }
}

impl Elem for f64 {
    fn add(self, o: Self) -> Self {
        self + o
    }
}

impl Collective for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        self.reduce(buf)
    }
    fn all_reduce_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        self.reduce(buf)
    }
    fn all_reduce_f32_parts(&mut self, parts: &mut [&mut [f32]]) -> Result<()> {
        match self.world {
            // Two ranks: sent and added where they are, no copy into one buffer and back.
            2 => self.reduce_pair(parts),
            _ => crate::dist::through_one_buffer(parts, |b| self.reduce(b)),
        }
    }
    #[cfg(feature = "cuda")]
    fn all_reduce_device(
        &mut self,
        grads: &mut [candle_core::Tensor],
        cap: usize,
    ) -> Option<Result<()>> {
        if self.nccl.is_none() {
            let dev = grads.first()?.device().clone();
            match crate::nccl::choose(self, &dev) {
                Ok(n) => self.nccl = Some(n),
                Err(e) => return Some(Err(e)),
            }
        }
        let nccl = self.nccl.as_ref()?.as_ref()?;
        Some(nccl.sum(grads, cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_group_sums_across_ranks_and_refuses_a_stranger() {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let place = |rank, world, port| Placement {
            rank,
            world_size: world,
            local_rank: rank,
            master: Some(format!("127.0.0.1:{port}")),
        };
        let t = Duration::from_secs(20);
        let port = free();
        let handles: Vec<_> = (0..3)
            .map(|r| {
                let p = place(r, 3, port);
                std::thread::spawn(move || {
                    let mut g = TcpGroup::connect(&p, "job-a", t).unwrap();
                    let mut v = vec![r as f32 + 0.5, 10.0 * r as f32];
                    g.all_reduce_f32(&mut v).unwrap();
                    let mut m = [r as f64];
                    g.all_reduce_f64(&mut m).unwrap();
                    (v, m[0])
                })
            })
            .collect();
        for h in handles {
            let (v, m) = h.join().unwrap();
            assert_eq!(v, vec![4.5, 30.0]);
            assert_eq!(m, 3.0);
        }
        // A silent connection and a stranger's bytes first: ignored, the ranks still meet.
        let port = free();
        let (p0, p1) = (place(0, 2, port), place(1, 2, port));
        let root = std::thread::spawn(move || {
            let mut g = TcpGroup::connect(&p0, "job-a", t).unwrap();
            let mut v = [1.0f32];
            g.all_reduce_f32(&mut v).unwrap();
            v[0]
        });
        let addr = format!("127.0.0.1:{port}");
        let _silent = loop {
            match TcpStream::connect(&addr) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        TcpStream::connect(&addr)
            .unwrap()
            .write_all(b"GET / HTTP/1.1\r\n\r\n..........")
            .unwrap();
        let mut g = TcpGroup::connect(&p1, "job-a", t).unwrap();
        let mut v = [2.0f32];
        g.all_reduce_f32(&mut v).unwrap();
        assert_eq!((v[0], root.join().unwrap()), (3.0, 3.0));
        let port = free();
        let (p0, p1) = (place(0, 2, port), place(1, 2, port));
        let root = std::thread::spawn(move || TcpGroup::connect(&p0, "job-a", t).map(|_| ()));
        let _other = TcpGroup::connect(&p1, "job-b", t);
        let e = root.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("another config"), "{e}");
    }

    /// A rank that leaves the group mid-job: the others' sums fail (the first to notice
    /// naming it), and promptly (their senders are blocked on each other's full streams until
    /// the failed rank's streams are shut), not after the group's timeout.
    #[test]
    fn a_rank_that_leaves_fails_the_others_sums_naming_it() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let errs: Vec<(String, Duration)> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..3)
                .map(|rank| {
                    sc.spawn(move || {
                        let p = Placement {
                            rank,
                            world_size: 3,
                            local_rank: rank,
                            master: Some(format!("127.0.0.1:{port}")),
                        };
                        let t = Duration::from_secs(120);
                        let mut g = TcpGroup::connect(&p, "job", t).unwrap();
                        if rank == 2 {
                            return None;
                        }
                        // Far more than the sockets buffer: the senders block.
                        let mut v = vec![1.0f32; 8 << 20];
                        let started = Instant::now();
                        let e = g.all_reduce_f32(&mut v).unwrap_err().to_string();
                        Some((e, started.elapsed()))
                    })
                })
                .collect();
            hs.into_iter().filter_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(errs.len(), 2);
        // The first rank to notice names rank 2; the other may see that rank's streams shut
        // first, and names it.
        assert!(errs.iter().any(|(e, _)| e.contains("rank 2")), "{errs:?}");
        for (rank, (e, took)) in errs.into_iter().enumerate() {
            let other = format!("rank {}", 1 - rank);
            assert!(e.contains("rank 2") || e.contains(&other), "{e}");
            // Not a speed: a hang would last the whole 120 s timeout.
            assert!(took < Duration::from_secs(60), "{e} after {took:?}");
        }
    }

    /// Two (a pair through rank 0), three and four ranks (the mesh), buffers shorter and
    /// longer than the world, alone and as the parts of one bucket: every rank gets the sum of
    /// the buffers added in rank order, to the bit (values chosen so that another order rounds
    /// differently), and the group's streams stay in step call after call.
    #[test]
    fn sums_match_rank_order_to_the_bit_on_two_to_four_ranks() {
        for world in [2, 3, 4] {
            sums_in_rank_order(world);
        }
    }

    fn sums_in_rank_order(world: usize) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let lens = [0usize, 1, 3, 4, 1001, 70_000];
        let value = |rank: usize, i: usize| -> f32 {
            match (rank + i) % 4 {
                0 => 1e8,
                1 => -1e8,
                2 => 1.0 + i as f32 * 1e-3,
                _ => 0.25 + rank as f32,
            }
        };
        let got: Vec<Vec<Vec<f32>>> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..world)
                .map(|rank| {
                    sc.spawn(move || {
                        let p = Placement {
                            rank,
                            world_size: world,
                            local_rank: rank,
                            master: Some(format!("127.0.0.1:{port}")),
                        };
                        let mut g = TcpGroup::connect(&p, "job", Duration::from_secs(30)).unwrap();
                        let mut out = Vec::new();
                        for &n in &lens {
                            let mut v: Vec<f32> = (0..n).map(|i| value(rank, i)).collect();
                            g.all_reduce_f32(&mut v).unwrap();
                            out.push(v);
                        }
                        // The same buffers as one bucket of parts: the same bits.
                        let mut vs: Vec<Vec<f32>> = lens
                            .iter()
                            .map(|&n| (0..n).map(|i| value(rank, i)).collect())
                            .collect();
                        let mut parts: Vec<&mut [f32]> =
                            vs.iter_mut().map(|v| v.as_mut_slice()).collect();
                        g.all_reduce_f32_parts(&mut parts).unwrap();
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        for (k, v) in vs.iter().enumerate() {
                            assert_eq!(bits(v), bits(&out[k]), "{world} ranks, part {k}");
                        }
                        let mut m = [rank as f64 * 0.1, 1.0];
                        g.all_reduce_f64(&mut m).unwrap();
                        let want = (1..world).fold(0.0, |acc, r| acc + r as f64 * 0.1);
                        assert_eq!(m, [want, world as f64]);
                        out
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (k, &n) in lens.iter().enumerate() {
            let want: Vec<f32> = (0..n)
                .map(|i| (1..world).fold(value(0, i), |acc, r| acc + value(r, i)))
                .collect();
            for (rank, g) in got.iter().enumerate() {
                assert!(
                    g[k].iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{world} ranks: rank {rank}, length {n}"
                );
                assert_eq!(g[k].len(), n);
            }
        }
        // Another order would differ somewhere: the check above can fail.
        let differs = (0..1001).any(|i| {
            let reversed = (0..world).rev().fold(0f32, |acc, r| acc + value(r, i));
            let in_order = (1..world).fold(value(0, i), |acc, r| acc + value(r, i));
            reversed.to_bits() != in_order.to_bits()
        });
        assert!(differs || world == 2, "{world} ranks");
    }
}
