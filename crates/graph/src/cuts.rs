//! Cut enumeration.
//!
//! Compute nodes are numbered in execution order `0..n`. A cut at *position* `p` separates the
//! first `p` nodes (the head) from the rest (the tail). Its *frontier* is the set of dynamic
//! tensors produced before it (or fed as graph inputs) and read after it: one tensor on a chain,
//! several inside a residual block or an Inception module.
//!
//! Not every position is a candidate. A position that separates a unary element-wise node
//! (`Relu`, `BatchNormalization`, a bias `Add`, `Clip`, …) from the node producing its only input,
//! when nothing else reads that input, is skipped: the cut after the element-wise node sends
//! exactly the same bytes, and cutting before it would break the producer/activation fusion on
//! both sides. The remaining positions, in order, are the candidate cuts; a cut's *index* is its
//! place in that list. Cut 0 is the raw input (full offload), the last cut has an empty frontier
//! (the device runs everything).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{GraphError, Result};
use crate::model::{ModelGraph, TensorId, TensorKind, TensorSpec};
use crate::opcost::{OpClass, op_class};

/// One candidate cut and what it costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cut {
    /// Position in [`ModelGraph::cuts`]; what every command and file calls the cut.
    pub index: usize,
    /// Number of compute nodes before the cut.
    pub position: usize,
    /// The last node of the head (`None` for cut 0).
    pub after: Option<String>,
    /// Its operator type.
    pub after_op: Option<String>,
    /// The frontier: tensors crossing the cut, ordered by when they are produced.
    pub tensors: Vec<TensorSpec>,
    /// Bytes crossing, at each tensor's own element type.
    pub bytes: u64,
    /// FLOPs before the cut (device side).
    pub head_flops: u64,
    /// FLOPs after the cut (server side).
    pub tail_flops: u64,
    /// Bytes of the distinct weights the head reads (device memory).
    pub head_param_bytes: u64,
    /// Bytes of the distinct weights the tail reads.
    pub tail_param_bytes: u64,
    /// A single tensor crosses: a natural bottleneck.
    pub bottleneck: bool,
}

/// Ops that can follow their producer without a candidate cut in between (one dynamic input,
/// output of the same shape and type).
fn fusable_unary(op: &str) -> bool {
    op_class(op) == OpClass::Elementwise && !matches!(op, "QuantizeLinear" | "DequantizeLinear" | "Resize" | "Upsample")
        || matches!(op, "Identity" | "Dropout")
}

impl ModelGraph {
    /// Node positions of the candidate cuts, ascending; always starts at 0 and ends at `n`.
    pub(crate) fn candidate_positions(&self) -> Vec<usize> {
        let n = self.nodes.len();
        let mut out = vec![0];
        for p in 1..n {
            if !self.fuses_with_previous(p) {
                out.push(p);
            }
        }
        if n > 0 {
            out.push(n);
        }
        out
    }

    /// Whether node `p` is a unary element-wise op whose only dynamic input comes from node `p-1`
    /// and is read by nothing else.
    fn fuses_with_previous(&self, p: usize) -> bool {
        let node = &self.nodes[p];
        if !fusable_unary(&node.op_type) {
            return false;
        }
        let dynamic: Vec<TensorId> = node.inputs.iter().copied().filter(|&t| self.tensors[t].is_dynamic()).collect();
        let [input] = dynamic.as_slice() else { return false };
        let Some(&output) = node.outputs.first() else { return false };
        self.producer_pos[*input] == Some(p - 1)
            && self.consumer_pos[*input].len() == 1
            && !self.outputs.contains(input)
            && self.tensors[*input].shape == self.tensors[output].shape
            && self.tensors[*input].dtype == self.tensors[output].dtype
    }

    /// Number of candidate cuts.
    pub fn num_cuts(&self) -> usize {
        self.positions.len()
    }

    /// The highest cut index (device-only).
    pub fn last_cut(&self) -> usize {
        self.positions.len() - 1
    }

    /// Checks that `index` names a cut.
    pub fn check_cut(&self, index: usize) -> Result<()> {
        if index > self.last_cut() {
            return Err(GraphError::CutOutOfRange { index, max: self.last_cut() });
        }
        Ok(())
    }

    /// Node position of cut `index` (number of compute nodes before it).
    pub fn position(&self, index: usize) -> Result<usize> {
        self.check_cut(index)?;
        Ok(self.positions[index])
    }

    /// The first cut whose head computes tensor `name` (e.g. an early exit's output).
    pub fn first_cut_after(&self, name: &str) -> Option<usize> {
        let t = self.tensor_id(name)?;
        let birth = self.birth(t);
        self.positions.iter().position(|&p| p >= birth)
    }

    /// Position after which a dynamic tensor exists: 0 for inputs, producer + 1 otherwise.
    pub(crate) fn birth(&self, t: TensorId) -> usize {
        self.producer_pos[t].map(|p| p + 1).unwrap_or(0)
    }

    /// Every candidate cut, in order.
    pub fn cuts(&self) -> Vec<Cut> {
        let n = self.nodes.len();
        // Frontier sweep over positions: a tensor crosses positions birth..=last_use.
        let mut enter: Vec<Vec<TensorId>> = vec![vec![]; n + 2];
        let mut leave: Vec<Vec<TensorId>> = vec![vec![]; n + 2];
        for (t, info) in self.tensors.iter().enumerate() {
            if !info.is_dynamic() {
                continue;
            }
            if let Some(&last) = self.consumer_pos[t].last() {
                let b = self.birth(t);
                if b <= last {
                    enter[b].push(t);
                    leave[last + 1].push(t);
                }
            }
        }
        // Weights enter the head at the position after their first reader.
        let mut param_at = vec![0u64; n + 2];
        let mut total_params = 0;
        for (t, info) in self.tensors.iter().enumerate() {
            if info.kind == TensorKind::Static
                && let Some(&first) = self.consumer_pos[t].first()
            {
                param_at[first + 1] += info.bytes();
                total_params += info.bytes();
            }
        }
        // Weights read on both sides of a cut count for both (rare: one reader is the rule).
        let shared: Vec<(usize, usize, u64)> = self
            .tensors
            .iter()
            .enumerate()
            .filter(|(t, info)| info.kind == TensorKind::Static && self.consumer_pos[*t].len() > 1)
            .map(|(t, info)| (self.consumer_pos[t][0], *self.consumer_pos[t].last().unwrap(), info.bytes()))
            .collect();
        let total_flops: u64 = self.nodes.iter().map(|n| n.cost.flops).sum();
        let mut live: BTreeSet<(usize, TensorId)> = BTreeSet::new();
        let mut head_flops = 0;
        let mut head_params = 0;
        let mut cuts = Vec::with_capacity(self.positions.len());
        let mut next = self.positions.iter().copied().enumerate().peekable();
        for p in 0..=n {
            if p > 0 {
                head_flops += self.nodes[p - 1].cost.flops;
            }
            head_params += param_at[p];
            for &t in &leave[p] {
                live.remove(&(self.birth(t), t));
            }
            for &t in &enter[p] {
                live.insert((p, t));
            }
            let Some(&(index, pos)) = next.peek() else { break };
            if pos != p {
                continue;
            }
            next.next();
            let tensors: Vec<TensorSpec> = live.iter().map(|&(_, t)| TensorSpec::from(&self.tensors[t])).collect();
            let bytes = tensors.iter().map(TensorSpec::bytes).sum();
            let last = p.checked_sub(1).map(|q| &self.nodes[q]);
            cuts.push(Cut {
                index,
                position: p,
                after: last.map(|n| n.name.clone()),
                after_op: last.map(|n| n.op_type.clone()),
                bottleneck: tensors.len() == 1,
                tensors,
                bytes,
                head_flops,
                tail_flops: total_flops - head_flops,
                head_param_bytes: head_params,
                tail_param_bytes: total_params - head_params
                    + shared.iter().filter(|&&(f, l, _)| f < p && l >= p).map(|&(_, _, b)| b).sum::<u64>(),
            });
        }
        cuts
    }

    /// One cut.
    pub fn cut(&self, index: usize) -> Result<Cut> {
        self.check_cut(index)?;
        Ok(self.cuts().swap_remove(index))
    }

    /// Tensor ids crossing the cut at node position `p`, ordered by production.
    pub(crate) fn frontier_at(&self, p: usize) -> Vec<TensorId> {
        let mut out: Vec<(usize, TensorId)> = (0..self.tensors.len())
            .filter(|&t| self.tensors[t].is_dynamic())
            .filter(|&t| self.birth(t) <= p && self.consumer_pos[t].last().is_some_and(|&l| l >= p))
            .map(|t| (self.birth(t), t))
            .collect();
        out.sort_unstable();
        out.into_iter().map(|(_, t)| t).collect()
    }
}
