// Short messages for valijson's validation errors ("expected integer,
// found string"). Private to core/json_schema.cpp; kept apart so that the
// validator and the wording each stay a readable size.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/json_schema.hpp"

namespace gv::schema_messages {

// One error as valijson reports it: a context such as {"<root>", "[server]",
// "[listen]"} and a description such as "Value type not permitted by 'type'
// constraint.".
struct RawError {
  std::vector<std::string> context;
  std::string description;
};

// Turns errors, in valijson's order, into at most max violations, dropping
// those that only say a child failed. schema and value are what was
// validated; they are read where a description does not say enough.
std::vector<SchemaViolation> translate(const nlohmann::json& schema, const nlohmann::json& value,
                                       const std::vector<RawError>& errors, size_t max);

}  // namespace gv::schema_messages
