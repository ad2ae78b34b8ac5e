//! Per-session state of the modules, keyed by each module's own type.
//!
//! The session actor owns one [`SessionState`] and hands it to the session
//! hooks; a module keeps whatever it needs under a type of its own (as
//! MongooseIM keeps `state_mod` per module in `mongoose_c2s`, and as
//! `http::Extensions` does in Rust). Nothing outside the module can name its
//! type, so no module reads another's state. An empty state costs one empty
//! vector: a session of a user who enabled nothing allocates nothing.

use std::any::{Any, TypeId};

/// The modules' slots of one session.
#[derive(Default)]
pub struct SessionState {
    /// Few modules keep state per session: a short vector beats a map.
    slots: Vec<(TypeId, Box<dyn Any + Send>)>,
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState").field("slots", &self.slots.len()).finish()
    }
}

impl SessionState {
    /// The slot of type `T`, if a module put one there.
    pub fn get<T: Any + Send>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        self.slots.iter().find(|(t, _)| *t == id).and_then(|(_, v)| v.downcast_ref())
    }

    pub fn get_mut<T: Any + Send>(&mut self) -> Option<&mut T> {
        let id = TypeId::of::<T>();
        self.slots.iter_mut().find(|(t, _)| *t == id).and_then(|(_, v)| v.downcast_mut())
    }

    /// The slot of type `T`, created with its default value when missing.
    pub fn get_or_default<T: Any + Send + Default>(&mut self) -> &mut T {
        let id = TypeId::of::<T>();
        let i = match self.slots.iter().position(|(t, _)| *t == id) {
            Some(i) => i,
            None => {
                self.slots.push((id, Box::new(T::default())));
                self.slots.len() - 1
            }
        };
        // The slot at `i` has type `T`: it was found or created by its TypeId.
        match self.slots[i].1.downcast_mut() {
            Some(v) => v,
            None => unreachable!("a slot holds the type of its key"),
        }
    }

    /// Puts `value` in the slot of its type, replacing what was there.
    pub fn insert<T: Any + Send>(&mut self, value: T) {
        let id = TypeId::of::<T>();
        match self.slots.iter_mut().find(|(t, _)| *t == id) {
            Some(slot) => slot.1 = Box::new(value),
            None => self.slots.push((id, Box::new(value))),
        }
    }

    /// Takes the slot of type `T` out.
    pub fn remove<T: Any + Send>(&mut self) -> Option<T> {
        let id = TypeId::of::<T>();
        let i = self.slots.iter().position(|(t, _)| *t == id)?;
        self.slots.swap_remove(i).1.downcast().ok().map(|b| *b)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Default, Debug, PartialEq)]
    struct A(u32);
    #[derive(Default, Debug, PartialEq)]
    struct B(&'static str);

    #[test]
    fn each_type_has_its_own_slot() {
        let mut s = SessionState::default();
        assert!(s.get::<A>().is_none());
        s.get_or_default::<A>().0 += 2;
        s.insert(B("b"));
        assert_eq!(s.get::<A>(), Some(&A(2)));
        assert_eq!(s.get::<B>(), Some(&B("b")));
        s.insert(A(7));
        assert_eq!(s.get_mut::<A>().map(|a| a.0), Some(7));
        assert_eq!(s.remove::<A>(), Some(A(7)));
        assert!(s.get::<A>().is_none());
        assert_eq!(s.get::<B>(), Some(&B("b")));
    }
}
