// Boost.Asio, Beast and URL compiled once for the whole host (separate
// compilation): every other file includes only their declarations.
#include <boost/asio/impl/src.hpp>
#include <boost/beast/src.hpp>
#include <boost/url/src.hpp>
