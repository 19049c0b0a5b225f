/// A stack that remembers its largest element.
pub struct MaxStack<T: Ord + Copy> {
    items: Vec<(T, T)>, // (value, max so far)
}

impl<T: Ord + Copy> MaxStack<T> {
    pub fn new() -> Self {
        MaxStack { items: Vec::new() }
    }

    pub fn push(&mut self, value: T) {
        let max = match self.items.last() {
            Some(&(_, m)) if m > value => m,
            _ => value,
        };
        self.items.push((value, max));
    }

    pub fn pop(&mut self) -> Option<T> {
        self.items.pop().map(|(v, _)| v)
    }

    pub fn max(&self) -> Option<T> {
        self.items.last().map(|&(_, m)| m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_the_maximum() {
        let mut s = MaxStack::new();
        s.push(3);
        s.push(7);
        s.push(5);
        assert_eq!(s.max(), Some(7));
        s.pop();
        s.pop();
        assert_eq!(s.max(), Some(3));
    }
}
