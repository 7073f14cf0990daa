//! Typed access with `k8s-openapi` types on top of the JSON store, for the simulated cluster,
//! the controllers and tests: [`Store::get_as`], [`Store::list_as`], [`Store::create_as`],
//! [`Store::update_as`], [`Store::update_status_as`], [`Store::delete_as`],
//! [`Store::modify_as`] and [`Store::modify_status_as`].

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{DeleteOptions, Deleted, ListOptions, Part, ResourceKey, Store};
use crate::apiserver::error::{Error, Result};
use crate::apiserver::meta;
use crate::apiserver::resources::GroupResource;

impl Store {
    /// Get a typed object.
    pub fn get_as<K>(&self, namespace: Option<&str>, name: &str) -> Result<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        from_value(&*self.get(&ResourceKey::of::<K>(namespace, name))?)
    }

    /// List typed objects.
    pub fn list_as<K>(&self, namespace: Option<&str>, opts: &ListOptions) -> Result<Vec<K>>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        self.list(&GroupResource::of::<K>(), namespace, opts)?
            .items
            .iter()
            .map(|v| from_value(v))
            .collect()
    }

    /// Create a typed object (namespace from its metadata).
    pub fn create_as<K>(&self, obj: &K) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let value = to_value(obj)?;
        let ns = meta::namespace_opt(&value).map(str::to_string);
        from_value(&*self.create(&GroupResource::of::<K>(), ns.as_deref(), value)?)
    }

    /// Update a typed object (namespace and name from its metadata).
    pub fn update_as<K>(&self, obj: &K) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let value = to_value(obj)?;
        let key = ResourceKey::for_object(GroupResource::of::<K>(), &value);
        from_value(&*self.update(&key, value)?)
    }

    /// Update a typed object's status.
    pub fn update_status_as<K>(&self, obj: &K) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let value = to_value(obj)?;
        let key = ResourceKey::for_object(GroupResource::of::<K>(), &value);
        from_value(&*self.update_status(&key, value)?)
    }

    /// Delete a typed object.
    pub fn delete_as<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted>
    where
        K: k8s_openapi::Resource,
    {
        self.delete(&ResourceKey::of::<K>(namespace, name), opts)
    }

    /// Read-modify-write an object, retrying on conflicts. `f` may run more than once; it must
    /// not call the store.
    pub fn modify_as<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        f: impl FnMut(&mut K),
    ) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        self.modify_part(namespace, name, f, Part::Main)
    }

    /// Like [`Store::modify_as`], writing through the `/status` subresource.
    pub fn modify_status_as<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        f: impl FnMut(&mut K),
    ) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        self.modify_part(namespace, name, f, Part::Status)
    }

    fn modify_part<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        mut f: impl FnMut(&mut K),
        part: Part,
    ) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let key = ResourceKey::of::<K>(namespace, name);
        let written = self.modify(&key, part, |value| {
            let mut obj: K = from_value(value)?;
            f(&mut obj);
            *value = to_value(&obj)?;
            Ok(true)
        })?;
        // The edit above never declines, so `modify` always returns the written object.
        let written = written.ok_or_else(|| Error::Internal(format!("{name}: not written")))?;
        from_value(&written)
    }
}

fn to_value<T: Serialize>(obj: &T) -> Result<Value> {
    serde_json::to_value(obj).map_err(|e| Error::Internal(format!("serializing object: {e}")))
}

fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T> {
    T::deserialize(value).map_err(|e| Error::Internal(format!("decoding object: {e}")))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
    use serde_json::json;

    use super::*;

    #[test]
    fn typed_helpers_and_modify() {
        let store = Store::new();
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": "c", "namespace": "default"}, "data": {"a": "1"}}),
        )
        .unwrap();
        store.create_as(&cm).unwrap();
        let got: ConfigMap = store.get_as(Some("default"), "c").unwrap();
        assert_eq!(got.data.unwrap()["a"], "1");
        let modified = store
            .modify_as::<ConfigMap>(Some("default"), "c", |c| {
                c.data
                    .get_or_insert_default()
                    .insert("b".into(), "2".into());
            })
            .unwrap();
        assert_eq!(modified.data.unwrap().len(), 2);
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
        store.create_as(&node).unwrap();
        store
            .modify_status_as::<Node>(None, "n1", |n| {
                n.status.get_or_insert_default().conditions = Some(vec![
                    serde_json::from_value(json!({"type": "Ready", "status": "True"})).unwrap(),
                ]);
            })
            .unwrap();
        store
            .modify_as::<Node>(None, "n1", |n| {
                n.spec.get_or_insert_default().unschedulable = Some(true)
            })
            .unwrap();
        assert_eq!(store.max_unavailable_nodes(), 1);
        let counts: Vec<usize> = store
            .unavailable_timeline()
            .iter()
            .map(|p| p.unavailable)
            .collect();
        assert_eq!(counts, vec![1, 0, 1]);
        assert_eq!(
            store
                .list_as::<Pod>(None, &ListOptions::default())
                .unwrap()
                .len(),
            0
        );
    }
}
