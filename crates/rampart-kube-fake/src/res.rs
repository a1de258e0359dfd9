//! Which resource a request or an object is about.

/// A resource: the API version as objects spell it (`v1`, `apps/v1`) and its plural.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Res {
    pub(crate) api_version: String,
    pub(crate) plural: String,
}

impl Res {
    pub(crate) fn new(api_version: &str, plural: &str) -> Self {
        Res {
            api_version: api_version.to_owned(),
            plural: plural.to_owned(),
        }
    }

    /// The API group, empty for the core group.
    pub(crate) fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }

    /// `plural` for the core group, `plural.group` otherwise, as the server's messages say.
    pub(crate) fn qualified(&self) -> String {
        match self.group() {
            "" => self.plural.clone(),
            group => format!("{}.{group}", self.plural),
        }
    }
}
