//! A slab that grows in fixed chunks.

use alloc::vec::Vec;
use core::ops::{Index, IndexMut};

/// A slab of slots, allocated in chunks of a fixed size: a `Vec` doubles, so that up to
/// half of it is spare capacity, while here at most one chunk is, and growing never moves
/// what is stored.
pub(crate) struct Slots<T> {
    chunks: Vec<Vec<T>>,
}

/// Slots per chunk of [`Slots`].
const CHUNK: usize = 64;

impl<T> Slots<T> {
    pub(crate) const fn new() -> Self {
        Self { chunks: Vec::new() }
    }

    pub(crate) fn len(&self) -> usize {
        match self.chunks.last() {
            Some(last) => (self.chunks.len() - 1) * CHUNK + last.len(),
            None => 0,
        }
    }

    /// Appends `item`, returning its index.
    pub(crate) fn push(&mut self, item: T) -> usize {
        let index = self.len();
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(item),
            _ => {
                // Exactly one chunk's capacity: `with_capacity` does not round up.
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(item);
                self.chunks.push(chunk);
            }
        }
        index
    }

    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        self.chunks.get(index / CHUNK)?.get(index % CHUNK)
    }

    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.chunks.get_mut(index / CHUNK)?.get_mut(index % CHUNK)
    }

    #[allow(dead_code)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

impl<T> Index<usize> for Slots<T> {
    type Output = T;
    fn index(&self, index: usize) -> &T {
        &self.chunks[index / CHUNK][index % CHUNK]
    }
}

impl<T> IndexMut<usize> for Slots<T> {
    fn index_mut(&mut self, index: usize) -> &mut T {
        &mut self.chunks[index / CHUNK][index % CHUNK]
    }
}
