//! How a right-padded batch runs without its padding: the rows' real tokens packed end to
//! end as pieces, each with the position its first token sits at, and the map from every
//! (row, position) of the padded batch to its packed token. Rows that begin alike (the
//! completions of one GRPO prompt, the chosen and rejected answers of a preference pair) can
//! share their common beginning: it is packed once, as a prefix piece, and each row continues
//! as a branch piece that attends to the prefix's keys and its own. A shared position's loss
//! appears in every row it belongs to, and its gradient is the sum of theirs, as in the padded
//! batch.

use crate::data::Batch;

/// Shared beginnings shorter than this are packed with each row: sharing adds a concatenation
/// of the prefix's keys and values per branch and layer.
pub const MIN_SHARED: usize = 16;

/// Consecutive packed tokens that run as one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub len: usize,
    /// The position of its first token (a branch starts where its prefix ends).
    pub start: usize,
    /// The prefix piece whose keys come before its own.
    pub after: Option<usize>,
}

/// A batch's real tokens, packed.
#[derive(Debug, Clone)]
pub struct Packed {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub pieces: Vec<Piece>,
    /// For each of the batch's b·t positions, its packed token (padding: `inputs.len()`).
    pub index: Vec<u32>,
}

impl Packed {
    /// Positions the longest piece reaches.
    pub fn longest(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| p.start + p.len)
            .max()
            .unwrap_or(0)
    }
}

/// The packing of `batch`, its rows' common beginnings shared when `share`; None when it
/// would change nothing (no padding and nothing shared).
pub fn plan(batch: &Batch, share: bool) -> Option<Packed> {
    let (b, t) = (batch.b, batch.t);
    if batch.lens.len() != b {
        return None;
    }
    let row = |r: usize| {
        let at = r * t..r * t + batch.lens[r];
        (&batch.inputs[at.clone()], &batch.targets[at])
    };
    // Same inputs and the same targets: a shared position must have one loss for all rows.
    let common = |a: usize, c: usize| {
        let ((ia, ta), (ic, tc)) = (row(a), row(c));
        (0..ia.len().min(ic.len()))
            .take_while(|&i| ia[i] == ic[i] && ta[i] == tc[i])
            .count()
    };
    // Groups of rows by their first row, with the beginning all of them share.
    let mut groups: Vec<(Vec<usize>, usize)> = Vec::new();
    // A row without tokens is all padding: no piece.
    for r in (0..b).filter(|&r| batch.lens[r] > 0) {
        let joined = share
            && groups.iter_mut().any(|(rows, shared)| {
                let c = common(rows[0], r);
                if c >= MIN_SHARED {
                    rows.push(r);
                    *shared = (*shared).min(c);
                }
                c >= MIN_SHARED
            });
        if !joined {
            groups.push((vec![r], batch.lens[r]));
        }
    }
    let shares = |(rows, shared): &(Vec<usize>, usize)| {
        // Every branch keeps at least one token of its own.
        let shared = rows
            .iter()
            .map(|&r| batch.lens[r].saturating_sub(1))
            .fold(*shared, usize::min);
        (rows.len() > 1 && shared >= MIN_SHARED).then_some(shared)
    };
    if batch.lens.iter().all(|&l| l == t) && groups.iter().all(|g| shares(g).is_none()) {
        return None;
    }
    let n = batch.lens.iter().sum::<usize>();
    let mut p = Packed {
        inputs: Vec::with_capacity(n),
        targets: Vec::with_capacity(n),
        pieces: Vec::new(),
        index: vec![0; b * t],
    };
    // Appends positions `at` of rows[0] as a piece starting there, and maps those positions
    // of every row in `rows` to it; returns the piece's index.
    let push = |p: &mut Packed, rows: &[usize], at: std::ops::Range<usize>, after| {
        let (i, g) = row(rows[0]);
        let first = p.inputs.len();
        for &r in rows {
            let slots = &mut p.index[r * t + at.start..r * t + at.end];
            for (k, slot) in slots.iter_mut().enumerate() {
                *slot = (first + k) as u32;
            }
        }
        p.inputs.extend_from_slice(&i[at.clone()]);
        p.targets.extend_from_slice(&g[at.clone()]);
        p.pieces.push(Piece {
            len: at.len(),
            start: at.start,
            after,
        });
        p.pieces.len() - 1
    };
    for g in &groups {
        let shared = shares(g);
        let prefix = shared.map(|s| push(&mut p, &g.0, 0..s, None));
        for &r in &g.0 {
            push(&mut p, &[r], shared.unwrap_or(0)..batch.lens[r], prefix);
        }
    }
    let end = p.inputs.len() as u32;
    for (r, &l) in batch.lens.iter().enumerate() {
        p.index[r * t + l..(r + 1) * t].fill(end);
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Sample;

    fn sample(ids: Vec<u32>, prompt: usize) -> Sample {
        let train = (0..ids.len()).map(|i| i > prompt).collect();
        Sample { ids, train }
    }

    fn batch(samples: &[Sample]) -> Batch {
        Batch::from_samples(&samples.iter().collect::<Vec<_>>(), 0)
    }

    /// Every real position maps to a packed token with its input and target; padding to the end.
    fn check_map(b: &Batch, p: &Packed) {
        for r in 0..b.b {
            for i in 0..b.t {
                let (at, k) = (r * b.t + i, p.index[r * b.t + i] as usize);
                match i < b.lens[r] {
                    true => {
                        assert_eq!(p.inputs[k], b.inputs[at], "input of row {r} at {i}");
                        assert_eq!(p.targets[k], b.targets[at], "target of row {r} at {i}");
                    }
                    false => assert_eq!(k, p.inputs.len(), "padding of row {r} at {i}"),
                }
            }
        }
        let total: usize = p.pieces.iter().map(|x| x.len).sum();
        assert_eq!(total, p.inputs.len());
    }

    #[test]
    fn full_rows_with_nothing_in_common_stay_as_they_are() {
        let b = batch(&[sample((0..9).collect(), 0), sample((20..29).collect(), 0)]);
        assert!(plan(&b, true).is_none());
    }

    #[test]
    fn full_rows_with_a_shared_prompt_are_packed_and_mapped() {
        let prompt: Vec<u32> = (100..120).collect();
        let row = |tail: u32| sample(prompt.iter().copied().chain(tail..tail + 6).collect(), 18);
        let b = batch(&[row(1), row(50)]);
        let p = plan(&b, true).expect("shared");
        check_map(&b, &p);
        // One prefix, two branches after it; the prefix ends where the targets part.
        assert_eq!(p.pieces.len(), 3);
        assert_eq!(p.pieces[0].after, None);
        assert!(
            p.pieces[1..]
                .iter()
                .all(|x| x.after == Some(0) && x.start == p.pieces[0].len)
        );
        assert_eq!(p.pieces[0].len, 19);
        assert!(plan(&b, false).is_none(), "nothing to pack without sharing");
    }

    #[test]
    fn short_common_beginnings_empty_rows_and_padding() {
        let b = batch(&[
            sample((0..10).collect(), 0),
            sample((0..6).chain(40..44).collect(), 0),
            sample(vec![7], 0),
            sample((0..30).collect(), 3),
        ]);
        assert_eq!(b.lens[2], 0);
        for share in [true, false] {
            let p = plan(&b, share).expect("padding");
            check_map(&b, &p);
            // 6 tokens in common is too few to share; the empty row has no piece.
            assert!(p.pieces.iter().all(|x| x.after.is_none() && x.start == 0));
            assert_eq!(p.pieces.len(), 3);
        }
    }
}
